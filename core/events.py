"""Public events (core/event_vocabulary.py): written in the same transaction as the state change
that causes them (the outbox pattern), so there is no state change without its event and no event
for a change that rolled back.

``record(...)`` is called by the transitions themselves (core/outbound.py, core/domains.py; the
submission's ``outbound.queued`` is written inside ``models.record_submission``), never by a
front-end. Writing an event also writes one ``WebhookDelivery`` per endpoint that takes it
(``models.fan_out``); the workers send those (core/webhooks.py).

The feed (``GET /v1/events``) reads events in id order. Ids are handed out at INSERT and become
visible at COMMIT, so on Postgres a transaction that commits late could show an id below one a
reader has already passed; the feed therefore returns only events older than ``SETTLE`` (see
``feed``): every transaction that writes an event is one short statement or a few.
"""
import datetime
import json

from peewee import JOIN

import models
import settings
from core import event_vocabulary as vocabulary
from core import ids

TYPES = vocabulary.EVENT_TYPES
SETTLE = datetime.timedelta(seconds=1)  # the feed shows events once they are this old (see above)
FEED_MAX = 100  # events per feed page


def iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


def outbound_resource(row, inbox_address, subject=None, message_id=None):
    """The REST resource of an OutboundEmail (``GET /v1/outbound/{id}`` without its history): the
    API renders it and every ``outbound.*`` event carries it as it was then."""
    return {
        "id": row.public_id,
        "status": row.status,
        "via": row.via,
        "inbox": inbox_address,
        "mail_from": row.mail_from,
        "recipients": json.loads(row.recipients) if isinstance(row.recipients, str) else list(row.recipients),
        "subject": subject,
        "message_id": message_id,
        "sent_message_id": row.message_id,
        "ses_message_id": row.ses_message_id,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "sent_at": iso(row.sent_at),
        "completed_at": iso(row.completed_at),
    }


def _outbound_row(outbound_id):
    e, i, m = models.OutboundEmail, models.Inbox, models.Message
    return e.select(e, i, m).join(i).switch(e).join(m, JOIN.LEFT_OUTER).where(e.id == outbound_id).first()


def _resource_of(row):
    message = row.message if row.message_id else None
    return outbound_resource(row, row.inbox.address, message.subject if message else None,
                             message.message_id if message else None)


def outbound_data(outbound_id):
    """The resource of OutboundEmail ``outbound_id`` as it is now (in the caller's transaction)."""
    row = _outbound_row(outbound_id)
    return _resource_of(row) if row else None


def record(event_type, user_id, data, inbox_id=None, outbound_id=None, now=None):
    """Write one event (and its deliveries) in the caller's transaction. Returns its public id."""
    if event_type not in TYPES and event_type != vocabulary.WEBHOOK_TEST:
        raise ValueError(f"unknown event type {event_type!r}")
    public_id = ids.new_event_id()
    models.insert_event(public_id, user_id, inbox_id, outbound_id, event_type, json.dumps(data),
                        now or models.utcnow())
    return public_id


def record_outbound(event_type, outbound_id, **extra):
    """``record`` for an OutboundEmail: its resource as of now, plus ``extra`` (e.g. the bounce)."""
    row = _outbound_row(outbound_id)
    if row is None:
        return None
    data = _resource_of(row)
    data.update(extra)
    return record(event_type, row.user_id, data, inbox_id=row.inbox_id, outbound_id=outbound_id)


def queued_fields(public_id, inbox_address, fields):
    """The submission's event for ``models.record_submission`` (it writes the event in the
    submission's one statement): its id, type, data and fan-out pattern. A message accepted by a
    sandbox key is ``outbound.sandboxed`` (it will never be sent), any other ``outbound.queued``."""
    status = fields["status"]
    event_type = vocabulary.OUTBOUND_SANDBOXED if status == "sandboxed" else vocabulary.OUTBOUND_QUEUED
    row = models.OutboundEmail(public_id=public_id, status=status, via=fields["via"], mail_from=fields["mail_from"],
                               recipients=fields["recipients"], message=None, ses_message_id=None, attempts=0,
                               last_error=None, created_at=fields["now"], updated_at=fields["now"])
    data = outbound_resource(row, inbox_address, fields["subject"], fields["message_id"])
    return {"public_event_id": ids.new_event_id(), "public_event_type": event_type,
            "public_event_data": json.dumps(data), "public_event_like": f"%,{event_type},%"}


def envelope(event, inbox_address=None, outbound_public_id=None):
    """What a webhook receives and the feed lists: the stable id, type, timestamp, the account,
    inbox and outbound ids, and ``data`` (the resource as it was)."""
    return {"id": event.public_id, "type": event.type, "timestamp": iso(event.created_at),
            "account": event.user.email,
            "inbox": inbox_address, "outbound": outbound_public_id, "data": json.loads(event.data or "{}")}


def _query():
    ev, i, e, u = models.Event, models.Inbox, models.OutboundEmail, models.User
    return (ev.select(ev, u, i, e)
            .join(u).switch(ev).join(i, JOIN.LEFT_OUTER).switch(ev)
            .join(e, JOIN.LEFT_OUTER))


def rendered(event):
    inbox = event.inbox.address if event.inbox_id is not None else None
    outbound = event.outbound.public_id if event.outbound_id is not None else None
    return envelope(event, inbox, outbound)


def by_id(event_id):
    """The envelope of Event row ``event_id`` (for a delivery), or None."""
    event = _query().where(models.Event.id == event_id).first()
    return rendered(event) if event else None


def feed(user_id, after=0, types=(), inbox_id=None, limit=FEED_MAX, now=None):
    """Events of ``user_id`` with a cursor above ``after``, oldest first, at most ``limit``, only
    those at least ``SETTLE`` old (see the module docstring). Returns [(cursor, envelope)]."""
    ev = models.Event
    now = now or models.utcnow()
    query = _query().where(ev.user == user_id, ev.id > after, ev.created_at <= now - SETTLE,
                           ev.type != vocabulary.WEBHOOK_TEST)
    if types:
        query = query.where(ev.type.in_(list(types)))
    if inbox_id is not None:
        query = query.where(ev.inbox == inbox_id)
    return [(event.id, rendered(event)) for event in query.order_by(ev.id).limit(limit)]


def prune(now=None):
    """Delete events older than ``events.retention_days`` (their deliveries and log go with them).
    A periodic task. Returns how many."""
    now = now or models.utcnow()
    cutoff = now - datetime.timedelta(days=settings.current().events.retention_days)
    with models.db.connection_context():
        old = models.Event.select(models.Event.id).where(models.Event.created_at < cutoff)
        ev_ids = [e.id for e in old.limit(10000)]
        if not ev_ids:
            return 0
        with models.db.atomic():
            models.WebhookAttempt.delete().where(models.WebhookAttempt.delivery.in_(
                models.WebhookDelivery.select(models.WebhookDelivery.id).where(
                    models.WebhookDelivery.event.in_(ev_ids)))).execute()
            models.WebhookDelivery.delete().where(models.WebhookDelivery.event.in_(ev_ids)).execute()
            return models.Event.delete().where(models.Event.id.in_(ev_ids)).execute()


MAX_SUMMARY_RECIPIENTS = 100  # recipients listed in one event's bounce/complaint/delivery summary


def ses_summary(kind, raw):
    """The part of an SES event a user needs, under a stable name: ``{"bounce": {type, sub_type,
    recipients: [{email, status, action, diagnostic}]}}`` and the like. ``raw`` is SES's object
    for ``kind`` (untrusted shape: anything missing is None)."""
    raw = raw if isinstance(raw, dict) else {}

    def listed(key, fields):
        items = raw.get(key) if isinstance(raw.get(key), list) else []
        return [{name: (item.get(source) if isinstance(item, dict) else None) for name, source in fields.items()}
                for item in items[:MAX_SUMMARY_RECIPIENTS]]

    if kind == "Bounce":
        return {"bounce": {"type": raw.get("bounceType"), "sub_type": raw.get("bounceSubType"),
                           "recipients": listed("bouncedRecipients", {
                               "email": "emailAddress", "status": "status", "action": "action",
                               "diagnostic": "diagnosticCode"})}}
    if kind == "Complaint":
        return {"complaint": {"type": raw.get("complaintFeedbackType"),
                              "recipients": listed("complainedRecipients", {"email": "emailAddress"})}}
    if kind == "DeliveryDelay":
        return {"delay": {"type": raw.get("delayType"), "expiration_time": raw.get("expirationTime"),
                          "recipients": listed("delayedRecipients", {
                              "email": "emailAddress", "status": "status", "diagnostic": "diagnosticCode"})}}
    if kind == "Delivery":
        recipients = raw.get("recipients") if isinstance(raw.get("recipients"), list) else []
        return {"delivery": {"recipients": [r for r in recipients[:MAX_SUMMARY_RECIPIENTS] if isinstance(r, str)],
                             "smtp_response": raw.get("smtpResponse")}}
    if kind == "Reject":
        return {"reject": {"reason": raw.get("reason")}}
    return {}
