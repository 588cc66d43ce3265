"""/v1/api-keys: a ``manage`` key creates, lists and revokes the account's keys. A key created
here never has more than the key that created it (core.keys.check_narrower: 403 key_scope)."""
import datetime

from flask import g
from flask import jsonify

import models
from core import accounts
from core import keys
from core.mail import reject_unknown
from core.mail import text
from webapp.api.auth import require
from webapp.api.errors import ApiError
from webapp.api.errors import Invalid
from webapp.api.inboxes import key_json
from webapp.api.pagination import paginate
from webapp.api.validation import json_body

KEY_FIELDS = {"name", "inboxes", "permissions", "expires_at", "daily_limit", "sandbox"}
MAX_KEY_ID = 2**31 - 1  # largest row id (Postgres serial); bigger is a 404


def list_keys():
    require(keys.MANAGE)
    query = models.ApiToken.select().where(models.ApiToken.user == g.user)
    return jsonify(paginate(query, models.ApiToken.id, key_json))


def create_key():
    require(keys.MANAGE)
    body = json_body()
    reject_unknown(body, KEY_FIELDS)
    name = text("name", body.get("name"), 100, single_line=True, required=True).strip()
    if not name or not name.isprintable():
        raise Invalid("name", "must be 1 to 100 printable characters")
    inboxes = body.get("inboxes")
    if inboxes is not None and not isinstance(inboxes, list):
        raise Invalid("inboxes", "must be a list of inbox addresses (omit it for all inboxes)")
    permissions = body.get("permissions")
    if permissions is not None and (not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions)):
        raise Invalid("permissions", f"must be a list of {', '.join(keys.PERMISSIONS)}")
    try:
        scope = keys.build_scope(g.user, inboxes=inboxes, permissions=permissions,
                                 expires_at=_timestamp(body.get("expires_at")), daily_limit=body.get("daily_limit"),
                                 sandbox=body.get("sandbox", False))
    except keys.KeyInputError as exc:
        raise Invalid(exc.field, exc.message) from None
    row, token = accounts.create_token(g.user, name, scope, created_by=g.token)
    response = jsonify(key_json(row, token))
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


def revoke_key(key_id):
    """Revoke a key of the account; only one this key could have created (not wider than itself)."""
    require(keys.MANAGE)
    row = key_id <= MAX_KEY_ID and models.ApiToken.get_or_none(models.ApiToken.id == key_id,
                                                                 models.ApiToken.user == g.user)
    if not row:
        raise ApiError(404, "key_not_found", f"No API key {key_id} in this account")
    keys.check_narrower(g.token, keys.scope_of(row))
    accounts.revoke_token(g.user, row.id)
    return "", 204


def _timestamp(value):
    """``expires_at``: an ISO 8601 date-time (UTC when no offset is given), as naive UTC."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise Invalid("expires_at", "must be an ISO 8601 date-time, e.g. 2026-12-31T00:00:00Z")
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if when.tzinfo is not None:
            when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved across midnight by its offset
        raise Invalid("expires_at", "must be an ISO 8601 date-time, e.g. 2026-12-31T00:00:00Z") from None
    return when
