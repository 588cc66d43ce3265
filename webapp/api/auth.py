"""Bearer-token authentication: the same API tokens that are SMTP passwords; what the key may
do is core/keys.py's decision (403 ``key_scope``, 401 ``key_expired``)."""
from flask import g
from flask import request

import models
from core import accounts
from core import audit
from core import keys
from core.errors import KeyRefused
from webapp.api.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="inboxlayer"'}


def authenticate():
    """Set ``g.user``, ``g.token`` and ``g.actor`` from the Authorization header, or raise a 401.

    Looked up on every request (no cache), so a revoked or expired token stops working at once.
    Every outcome is recorded in the audit trail (batched, see core/audit.py).
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if not header:
        raise ApiError(401, "unauthorized", "Missing Authorization: Bearer <token> header", CHALLENGE)
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "Authorization must be 'Bearer <token>'", CHALLENGE)
    token = token.strip()
    client_ip = request.remote_addr or ""
    row = accounts.lookup_token(token, client_ip=client_ip, via="api")
    if row is None:
        user_id, token_id, prefix = accounts.presented_key(token)
        audit.record(audit.Actor("api", client_ip, user_id, token_id, prefix), "auth", "failure", "credentials",
                     request.path[:200])
        raise ApiError(401, "unauthorized", "Invalid or revoked API token", CHALLENGE)
    g.actor = audit.Actor.of_token(row, "api", client_ip)
    if keys.is_expired(row):
        audit.record(g.actor, "auth", "failure", "expired", request.path[:200])
        raise ApiError(401, "key_expired", "API key expired", CHALLENGE)
    audit.record(g.actor, "auth", "success", "", f"{request.method} {request.path}"[:200])
    g.token = row
    g.user = row.user


def require(action):
    """403 key_scope unless the request's key has the ``action`` permission (core.keys)."""
    keys.check(g.token, action)


def owned_inbox(address, action=None):
    """The caller's inbox at ``address`` (case-insensitive) that the key may use for ``action``.

    A key without the permission gets 403 ``key_scope`` whatever the address; a key scoped to
    some inboxes gets the same 403 for any address outside its scope, existing or not; other keys
    get 404 for unknown and foreign alike, so the API does not tell who owns which address."""
    if action is not None:
        require(action)
    address = (address or "").strip().lower()
    # Postgres refuses NUL in text parameters; such an address cannot exist anyway.
    plausible = 0 < len(address) <= 320 and address.isprintable()
    inbox = plausible and models.Inbox.get_or_none(models.Inbox.address == address, models.Inbox.user == g.user)
    if not inbox or not keys.may_see(g.token, inbox):
        if g.token.inbox_ids:
            raise KeyRefused("inbox_scope", "inbox outside the API key's scope")
        raise ApiError(404, "inbox_not_found", f"No inbox {address!r} in this account")
    return inbox
