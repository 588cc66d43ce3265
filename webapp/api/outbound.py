"""GET /v1/outbound and /v1/outbound/{id}: what happened to each message sent."""
import json

from flask import g
from flask import jsonify
from flask import request
from peewee import JOIN

import models
from core import ids
from core import outbound
from core import recipients
from webapp.api.auth import owned_inbox
from webapp.api.errors import ApiError
from webapp.api.errors import Invalid
from webapp.api.pagination import paginate




def iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


def outbound_json(row, events=None):
    message = row.message if row.message_id else None
    data = {
        "id": row.public_id,
        "status": row.status,
        "via": row.via,
        "inbox": row.inbox.address,
        "mail_from": row.mail_from,
        "recipients": json.loads(row.recipients),
        "subject": message.subject if message else None,
        "message_id": message.message_id if message else None,
        "sent_message_id": row.message_id,
        "ses_message_id": row.ses_message_id,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "sent_at": iso(row.sent_at),
        "completed_at": iso(row.completed_at),
    }
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
    return (models.OutboundEmail.select(models.OutboundEmail, models.Inbox, models.Message)
            .join(models.Inbox).switch(models.OutboundEmail)
            .join(models.Message, JOIN.LEFT_OUTER)
            .where(models.OutboundEmail.user == g.user))


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
            query = query.where(models.OutboundEmail.inbox == owned_inbox(inbox))
        except ApiError:
            raise Invalid("inbox", f"no inbox {inbox!r} in this account") from None
    return jsonify(paginate(query, models.OutboundEmail.id, outbound_json))
