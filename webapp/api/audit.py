"""GET /v1/audit: the account's audit trail (authentications and send decisions), newest first.

A ``manage`` key reads the whole account's trail; any other key reads its own rows only."""
import datetime

from flask import g
from flask import jsonify
from flask import request

import models
from core import audit
from core import keys
from webapp.api.errors import Invalid
from webapp.api.outbound import iso
from webapp.api.pagination import paginate


def audit_json(row):
    return {"id": row.id, "occurred_at": iso(row.occurred_at), "action": row.action, "outcome": row.outcome,
            "reason": row.reason or None, "key_prefix": row.key_prefix, "protocol": row.protocol,
            "client_ip": row.client_ip, "detail": row.detail}


def list_audit():
    audit.flush()  # rows still in this process's buffer are part of the answer
    a = models.AuditEvent
    query = a.select().where(a.user == g.user)
    if keys.MANAGE not in (g.token.permissions or "").split(","):
        query = query.where(a.token == g.token.id)
    key = request.args.get("key")
    if key is not None:
        if not 1 <= len(key) <= 16 or not key.isascii() or not key.isprintable():
            raise Invalid("key", "must be a key prefix as listed (il_ and up to 13 more characters)")
        query = query.where(a.key_prefix.startswith(key))
    since = request.args.get("since")
    if since is not None:
        query = query.where(a.occurred_at >= _since(since))
    return jsonify(paginate(query, a.id, audit_json))


def _since(value):
    try:
        if len(value) > 40:
            raise ValueError(value)
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if when.tzinfo is not None:
            when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved across midnight by its offset
        raise Invalid("since", "must be an ISO 8601 date-time, e.g. 2026-11-29T00:00:00Z") from None
    return when
