"""The mailbox simulator: ``delivered@``, ``bounced@`` and ``complained@`` at
``simulator.<default domain>`` (like SES's mailbox simulator and the peers' test addresses).

A message whose recipients are all simulator addresses is accepted like any other (same checks,
same 250/202, a copy in Sent) but not charged to the quota, and the relay job (smtpd_worker/jobs.py)
never hands it to SES: it records it sent under a simulated SES id and applies the matching SES
event through the same lifecycle function the SNS webhook uses (outbound.apply_ses_event), so an
agent's bounce handling sees exactly what a real bounce looks like; the event is marked
``simulated`` and, unlike a real one, neither suppresses the address nor counts towards pausing the
inbox (core/recipients.py). Mixing simulator and real
recipients in one message is refused (SimulatorMixed): one message has one fate.
"""
import settings
from core import outbound
from core.errors import SimulatorMixed

SUBDOMAIN = "simulator"
# local part (named after the status it ends in) -> (SES event kind, the event's sub-object)
OUTCOMES = {
    outbound.DELIVERED: ("Delivery", lambda rcpt: {"recipients": [rcpt],
                                                   "smtpResponse": "250 2.0.0 OK (mailbox simulator)"}),
    outbound.BOUNCED: ("Bounce", lambda rcpt: {"bounceType": "Permanent", "bounceSubType": "General",
                                               "bouncedRecipients": [{"emailAddress": rcpt, "diagnosticCode":
                                                                      "smtp; 550 5.1.1 user unknown (mailbox simulator)"}]}),
    outbound.COMPLAINED: ("Complaint", lambda rcpt: {"complaintFeedbackType": "abuse",
                                                     "complainedRecipients": [{"emailAddress": rcpt}]}),
}


def domain() -> str:
    return f"{SUBDOMAIN}.{settings.current().server.default_domain}"


def is_simulator(address: str) -> bool:
    local, _, host = address.strip().lower().rpartition("@")
    return host == domain() and local.split("+", 1)[0] in OUTCOMES


def all_simulated(recipients) -> bool:
    return bool(recipients) and all(is_simulator(r) for r in recipients)


def classify(recipients) -> bool:
    """True when every recipient is a simulator address, False when none is; SimulatorMixed otherwise."""
    flags = {is_simulator(r) for r in recipients}
    if len(flags) > 1:
        raise SimulatorMixed()
    return flags == {True}


def ses_id_for(public_id) -> str:
    return f"simulator-{public_id}"


def outcome_events(public_id, recipients, attempt) -> list:
    """[(idempotency key, SES event kind, SES event)]: what SES would report for each simulator
    recipient of the message ``public_id``; core.ses_events.apply_simulated applies them."""
    ses_id = ses_id_for(public_id)
    events = []
    for index, rcpt in enumerate(recipients):
        kind, detail = OUTCOMES[rcpt.strip().lower().rpartition("@")[0].split("+", 1)[0]]
        event = {"eventType": kind, "mail": {"messageId": ses_id, "tags": {"outbound_id": [public_id]},
                                             "destination": [rcpt]},
                 kind[0].lower() + kind[1:]: detail(rcpt)}
        events.append((f"simulator:{public_id}:{attempt}:{index}", kind, event))
    return events
