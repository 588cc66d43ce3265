"""GET /v1/outbound and /v1/outbound/{id}: what happened to each message sent."""
import json

from flask import g
from flask import jsonify
from flask import request
from peewee import JOIN

import models
from core import events as public_events
from core import ids
from core import keys
from core import outbound
from core import recipients
from webapp.api.auth import owned_inbox
from webapp.api.auth import require
from webapp.api.errors import ApiError
from webapp.api.errors import Invalid
from webapp.api.pagination import paginate

iso = public_events.iso


def outbound_json(row, events=None):
    """The resource (core.events.outbound_resource: the events carry the same), with its history
    when ``events`` is given."""
    message = row.message if row.message_id else None
    data = public_events.outbound_resource(row, row.inbox.address, message.subject if message else None,
                                           message.message_id if message else None)
    if events is not None:
        data["events"] = [event_json(e) for e in events]
        data["refused_recipients"] = recipients.refused_at_rcpt(events)
    return data


def event_json(event):
    try:
        detail = json.loads(event.detail or "{}")
    except ValueError:
        detail = {"raw": event.detail}
    return {"type": event.type, "detail": detail if isinstance(detail, dict) else {"value": detail},
            "occurred_at": iso(event.occurred_at)}


def _query():
    """The account's outbound emails that the key may read (its inbox scope)."""
    require(keys.READ)
    query = (models.OutboundEmail.select(models.OutboundEmail, models.Inbox, models.Message)
             .join(models.Inbox).switch(models.OutboundEmail)
             .join(models.Message, JOIN.LEFT_OUTER)
             .where(models.OutboundEmail.user == g.user))
    scoped = keys.inbox_filter(g.token, models.OutboundEmail.inbox)
    return query if scoped is None else query.where(scoped)


def find(public_id):
    row = ids.is_public_id(public_id) and _query().where(models.OutboundEmail.public_id == public_id).first()
    if not row:
        raise ApiError(404, "outbound_not_found", f"No outbound email {public_id!r} in this account")
    return row


def get_outbound(public_id):
    row = find(public_id)
    events = (models.OutboundEvent.select().where(models.OutboundEvent.outbound == row)
              .order_by(models.OutboundEvent.occurred_at, models.OutboundEvent.id))
    return jsonify(outbound_json(row, list(events)))


def list_outbound():
    query = _query()
    status = request.args.get("status")
    if status is not None:
        if status not in outbound.STATUSES:
            raise Invalid("status", f"must be one of {', '.join(outbound.STATUSES)}")
        query = query.where(models.OutboundEmail.status == status)
    inbox = request.args.get("inbox")
    if inbox is not None:
        try:
            query = query.where(models.OutboundEmail.inbox == owned_inbox(inbox, keys.READ))
        except ApiError:
            raise Invalid("inbox", f"no inbox {inbox!r} in this account") from None
    return jsonify(paginate(query, models.OutboundEmail.id, outbound_json))
