"""Bearer-token authentication: the same API tokens that are SMTP passwords."""
from flask import g
from flask import request

import models
from core import accounts
from webapp.api.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="inboxlayer"'}


def authenticate():
    """Set ``g.user`` and ``g.token`` from the Authorization header, or raise a 401.

    Looked up on every request (no cache), so a revoked token stops working at once.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if not header:
        raise ApiError(401, "unauthorized", "Missing Authorization: Bearer <token> header", CHALLENGE)
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "Authorization must be 'Bearer <token>'", CHALLENGE)
    row = accounts.lookup_token(token.strip())
    if row is None:
        raise ApiError(401, "unauthorized", "Invalid or revoked API token", CHALLENGE)
    g.token = row
    g.user = row.user


def owned_inbox(address):
    """The caller's inbox at ``address`` (case-insensitive); 404 for unknown and foreign alike,
    so the API does not tell who owns which address."""
    address = (address or "").strip().lower()
    # Postgres refuses NUL in text parameters; such an address cannot exist anyway.
    plausible = 0 < len(address) <= 320 and address.isprintable()
    inbox = plausible and models.Inbox.get_or_none(models.Inbox.address == address, models.Inbox.user == g.user)
    if not inbox:
        raise ApiError(404, "inbox_not_found", f"No inbox {address!r} in this account")
    return inbox
