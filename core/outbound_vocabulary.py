"""The words of the OutboundEmail lifecycle: statuses, event types, ranks, SES event kinds.

Standard library only, on purpose: the client CLI (``inboxlayer status``/``outbound list``), which
must not import peewee or Flask, reads the same lists as the dashboard, the API and the OpenAPI
document. ``core/outbound.py`` (the transitions) re-exports every name here; everything but the
client CLI reads them from there. Adding a status or an event type is an edit here plus its docs
(docs/relay.md's tables; tests/test_outbound_lifecycle.py checks they agree).
"""
QUEUED = "queued"  # committed by submit(); its relay job is (or will be) in the queue
SENDING = "sending"  # a worker holds it (lease) or a retry is scheduled
SENT = "sent"  # SES accepted it
DELIVERED = "delivered"
BOUNCED = "bounced"
COMPLAINED = "complained"
FAILED = "failed"  # SES refused it for good, or every attempt failed
SANDBOXED = "sandboxed"  # accepted with a sandbox key: stored in Sent, never relayed, not charged

STATUSES = (QUEUED, SENDING, SENT, DELIVERED, BOUNCED, COMPLAINED, FAILED, SANDBOXED)
ACTIVE = (QUEUED, SENDING)  # the relay still works on it (and may read its message file)
FINAL = (DELIVERED, BOUNCED, COMPLAINED, FAILED, SANDBOXED)  # nothing more happens unless SES reports later
UNDELIVERED = (BOUNCED, COMPLAINED, FAILED)  # the message did not make it (the CLI exits 4)

# How far along a message is; an SES event moves a row only to a higher rank.
RANK = {QUEUED: 0, SENDING: 1, SENT: 2, DELIVERED: 3, FAILED: 4, BOUNCED: 4, COMPLAINED: 5,
        SANDBOXED: 6}  # a sandboxed row has no SES id, so no SES event ever reaches it

# Event types the relay writes (OutboundEvent.type).
RELAY_EVENT_TYPES = ("queued", "sandboxed", "attempt", "batch_sent", "sent", "retry", "failed", "released", "possible_duplicate")
# The relay events that record the outcome of an attempt (what a claim looks back at).
ATTEMPT_EVENT_TYPES = ("attempt", "batch_sent", "sent", "retry", "failed", "released")
# Events that say nothing about SES having the message (a ``retry`` is looked at: see outbound._refused).
NO_SEND_EVENT_TYPES = ("queued", "attempt", "released", "failed")

# SES event kind (eventType / notificationType) -> our event type; any other kind is "ses_<kind>".
SES_EVENT_TYPES = {"Delivery": "delivered", "Bounce": "bounced", "Complaint": "complained", "Reject": "rejected",
                   "DeliveryDelay": "delivery_delayed", "Send": "ses_accepted"}
SES_OTHER_EVENT_PREFIX = "ses_"
DUPLICATE_COPY = "duplicate_copy"  # an SES event for a second copy sent in the at-least-once window
# SES event kind -> the status it moves a row to (by rank); the other kinds are history only.
STATUS_OF_SES_EVENT = {"Delivery": DELIVERED, "Bounce": BOUNCED, "Complaint": COMPLAINED, "Reject": FAILED}

EVENT_TYPES = RELAY_EVENT_TYPES + tuple(SES_EVENT_TYPES.values()) + (DUPLICATE_COPY,)


def ses_event_type(kind: str) -> str:
    """Our event type for an SES event kind."""
    return SES_EVENT_TYPES.get(kind, SES_OTHER_EVENT_PREFIX + kind.lower())
