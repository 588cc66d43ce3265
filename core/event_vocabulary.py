"""The event types users receive (webhooks, ``GET /v1/events``, ``inboxlayer events tail``).

Standard library only, like core/outbound_vocabulary.py: the client CLI reads it. These are the
public events, one per state change a user cares about; the relay's own history
(``OutboundEvent``: attempts, retries, leases) stays on the outbound resource. Adding a type is an
edit here plus its row in docs/webhooks.md (tests/test_webhooks_docs.py checks they agree).
"""
OUTBOUND_QUEUED = "outbound.queued"  # accepted and committed (the 250 / 202)
OUTBOUND_SENT = "outbound.sent"  # SES accepted it
OUTBOUND_DELIVERED = "outbound.delivered"
OUTBOUND_DELIVERY_DELAYED = "outbound.delivery_delayed"
OUTBOUND_BOUNCED = "outbound.bounced"
OUTBOUND_COMPLAINED = "outbound.complained"
OUTBOUND_FAILED = "outbound.failed"  # once, after the relay gave up (or SES rejected it)
OUTBOUND_REFUSED = "outbound.refused"  # recipients refused at SMTP RCPT of a message the others got (recipient safety)
OUTBOUND_SANDBOXED = "outbound.sandboxed"  # accepted by a sandbox key, not relayed
DOMAIN_VERIFIED = "domain.verified"
DOMAIN_FAILED = "domain.failed"
INBOX_PAUSED = "inbox.paused"
WEBHOOK_TEST = "webhook.test"  # "send test event": delivered to one endpoint, never in the feed

EVENT_TYPES = (OUTBOUND_QUEUED, OUTBOUND_SENT, OUTBOUND_DELIVERED, OUTBOUND_DELIVERY_DELAYED, OUTBOUND_BOUNCED,
               OUTBOUND_COMPLAINED, OUTBOUND_FAILED, OUTBOUND_REFUSED, OUTBOUND_SANDBOXED, DOMAIN_VERIFIED,
               DOMAIN_FAILED, INBOX_PAUSED)
EMITTED = EVENT_TYPES  # every type has a producer (tests check each one is written where it should be)

# SES event kind -> the public event it raises (kinds not listed raise none).
OF_SES_EVENT = {"Delivery": OUTBOUND_DELIVERED, "Bounce": OUTBOUND_BOUNCED, "Complaint": OUTBOUND_COMPLAINED,
                "DeliveryDelay": OUTBOUND_DELIVERY_DELAYED, "Reject": OUTBOUND_FAILED}

# Delivery states of one (event, endpoint) pair.
PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"  # every retry used, or the endpoint was disabled/deleted meanwhile
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED)
