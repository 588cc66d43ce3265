"""SES delivery events arriving as SNS notifications: verify, parse, then hand each to
``core.outbound.apply_ses_event`` (the lifecycle: ranks, which event moves which status).

Verification (never switched off):
- ``SigningCertURL`` must be https on a host in ``ses.sns_cert_hosts``. Plain http is accepted
  only for an allowlisted *loopback* host (127.0.0.1, ::1, localhost), which is how the tests
  serve a test certificate; a production allowlist names SNS hosts and so never allows http.
- The signature over SNS's canonical string is checked with that certificate's key: SHA1 for
  SignatureVersion 1, SHA256 for 2.
- ``TopicArn`` must be in ``ses.sns_topic_arns``, checked first: a notification or subscription
  from any other topic (anyone can create one and subscribe us) is refused before a certificate is
  fetched or a SubscribeURL visited. An empty list accepts nothing (and web refuses to start in
  production with it, see settings.web_production_problems).
- ``Timestamp`` must be within ``MAX_AGE`` of now (a captured notification cannot be replayed
  later), and each SNS ``MessageId`` is applied once (``OutboundEvent.dedupe_key``).

Applying (core/outbound.py): a row is found by SES message id, or by the ``outbound_id`` tag the
relay attaches (so an event also settles a row whose worker died between SES accepting and the row
recording it). Statuses only move forward by rank, so duplicates and out-of-order arrival are
harmless: a late Delivery never overwrites a Bounce.
"""
import base64
import datetime
import ipaddress
import json
import logging
import re
import threading
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
import settings
from core import outbound
from core import recipients
from core import simulator

log = logging.getLogger(__name__)

MAX_AGE = datetime.timedelta(hours=1)  # SNS retries an HTTP endpoint for about an hour at most
MAX_SKEW = datetime.timedelta(minutes=5)  # clocks disagree a little; a future timestamp is forged
MAX_CERT_BYTES = 64 * 1024
CERT_CACHE_SIZE = 32
LOOPBACK_NAMES = {"localhost"}

NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
MESSAGE_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")  # Delivery, Bounce, DeliveryDelay, ...: a name, not text


class Rejected(Exception):
    """The notification is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


# -- verification -----------------------------------------------------------------------------

def parse(body):
    """The SNS envelope as a dict, or Rejected(400)."""
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(400, "body is not JSON") from None
    if not isinstance(envelope, dict) or envelope.get("Type") not in MESSAGE_TYPES:
        raise Rejected(400, "not an SNS message")
    fields = CONFIRMATION_FIELDS if envelope["Type"] != "Notification" else NOTIFICATION_FIELDS
    required = [f for f in fields if f != "Subject"] + ["Signature", "SignatureVersion", "SigningCertURL"]
    missing = [f for f in required if not isinstance(envelope.get(f), str)]
    if missing:
        raise Rejected(400, f"missing SNS field(s): {', '.join(missing)}")
    return envelope


def verify(envelope: dict, now: datetime.datetime | None = None) -> None:
    """Raise Rejected unless ``envelope`` is a fresh, genuinely signed message from an allowed topic."""
    topics = settings.current().ses.sns_topic_arns
    if envelope["TopicArn"] not in topics:
        if not topics:
            log.error("SNS notification from %.300s refused: ses.sns_topic_arns is empty", envelope["TopicArn"])
        raise Rejected(403, "topic not accepted here")
    check_timestamp(envelope["Timestamp"], now)
    hash_class = HASHES.get(envelope["SignatureVersion"])
    if hash_class is None:
        raise Rejected(400, f"unsupported SignatureVersion {envelope['SignatureVersion']!r}")
    certificate = fetch_certificate(envelope["SigningCertURL"])
    try:
        signature = base64.b64decode(envelope["Signature"], validate=True)
        certificate.public_key().verify(signature, string_to_sign(envelope), padding.PKCS1v15(), hash_class())
    except (InvalidSignature, ValueError, TypeError):
        raise Rejected(403, "signature does not verify") from None


def string_to_sign(envelope):
    fields = CONFIRMATION_FIELDS if envelope["Type"] != "Notification" else NOTIFICATION_FIELDS
    return "".join(f"{name}\n{envelope[name]}\n" for name in fields if name in envelope).encode("utf-8")


def check_timestamp(value, now=None):
    try:
        stamp = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Rejected(400, "bad Timestamp") from None
    if stamp.tzinfo is None:
        raise Rejected(400, "bad Timestamp")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if stamp < now - MAX_AGE or stamp > now + MAX_SKEW:
        raise Rejected(400, "stale or future Timestamp")


def check_url(url: str, what: str) -> str:
    """An SNS-supplied URL we are about to fetch: https on an allowlisted host (http only for an
    allowlisted loopback host), no credentials."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise Rejected(403, f"{what} is not a valid URL") from None
    allowed = {h.lower() for h in settings.current().ses.sns_cert_hosts}
    if host not in allowed or parts.username or parts.password:
        raise Rejected(403, f"{what} host is not allowed")
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host)):
        return url
    raise Rejected(403, f"{what} must be https")


def is_loopback(host):
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_cert_cache = {}
_cert_lock = threading.Lock()


def fetch_certificate(url):
    check_url(url, "SigningCertURL")
    if not urlsplit(url).path.endswith(".pem"):
        raise Rejected(403, "SigningCertURL is not a certificate")
    with _cert_lock:
        cached = _cert_cache.get(url)
    if cached is None:
        try:
            response = requests.get(url, timeout=5, allow_redirects=False, stream=True)
            pem = response.raw.read(MAX_CERT_BYTES + 1, decode_content=True)
            response.close()
        except requests.RequestException as exc:
            raise Rejected(403, f"signing certificate unavailable: {type(exc).__name__}") from None
        if response.status_code != 200 or len(pem) > MAX_CERT_BYTES:
            raise Rejected(403, "signing certificate unavailable")
        try:
            cached = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise Rejected(403, "signing certificate is not a PEM certificate") from None
        with _cert_lock:
            if len(_cert_cache) >= CERT_CACHE_SIZE:
                _cert_cache.pop(next(iter(_cert_cache)))
            _cert_cache[url] = cached
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cached.not_valid_before_utc <= now <= cached.not_valid_after_utc:
        raise Rejected(403, "signing certificate expired")
    return cached


def confirm_subscription(envelope):
    """Visit SubscribeURL (checked like the certificate URL) so SNS starts delivering."""
    url = check_url(envelope["SubscribeURL"], "SubscribeURL")
    try:
        response = requests.get(url, timeout=10, allow_redirects=False)
    except requests.RequestException as exc:
        raise Rejected(502, f"subscription confirmation failed: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise Rejected(502, f"subscription confirmation failed: HTTP {response.status_code}")
    log.info("confirmed SNS subscription to %s", envelope["TopicArn"])


# -- applying SES events ----------------------------------------------------------------------

def ses_event(envelope):
    """The SES event inside a Notification (event publishing or identity notifications)."""
    try:
        event = json.loads(envelope["Message"])
    except ValueError:
        raise Rejected(400, "Message is not an SES event") from None
    if not isinstance(event, dict):
        raise Rejected(400, "Message is not an SES event")
    kind = event.get("eventType") or event.get("notificationType")
    if not isinstance(kind, str) or not EVENT_TYPE.fullmatch(kind):
        raise Rejected(400, "Message is not an SES event: eventType is missing, empty or not a name")
    if not isinstance(event.get("mail"), dict):
        raise Rejected(400, "Message is not an SES event: no mail object")
    return kind, event


def apply(sns_message_id, kind, event, simulated=False):
    """Take what the lifecycle needs out of the SES event and apply it (outbound.apply_ses_event).
    Returns what happened: "applied", "recorded" (history only), "duplicate" or "unknown".
    ``simulated`` (core/simulator.py): the event is marked so in its detail and has no effect on
    the account (no suppression, not counted towards a pause), like SES's mailbox simulator."""
    mail = event["mail"]
    ses_message_id = mail.get("messageId")
    if not isinstance(ses_message_id, str):
        ses_message_id = None
    tags = mail.get("tags")
    public_ids = tags.get("outbound_id") if isinstance(tags, dict) else None
    public_ids = public_ids if isinstance(public_ids, list) else []
    detail_key = kind[0].lower() + kind[1:]
    detail = {"ses_message_id": ses_message_id, "sns_message_id": sns_message_id,
              detail_key: event.get(detail_key) or event.get(kind.lower()) or {}}
    if simulated:
        detail["simulated"] = True
    tagged_id = str(public_ids[0]) if public_ids else None
    outcome = outbound.apply_ses_event(kind, sns_message_id, ses_message_id, tagged_id, detail,
                                       lambda: describe(kind, event))
    if outcome in ("applied", "recorded") and not simulated:  # first time this SNS message is seen
        recipients.note_ses_event(kind, event, ses_message_id, tagged_id)  # suppress, maybe pause
    return outcome


def describe(kind, event):
    """A one-line, human-readable reason for a bounce, complaint or reject."""
    if kind == "Bounce":
        bounce = event.get("bounce") or {}
        recipients = bounce.get("bouncedRecipients") or [{}]
        first = recipients[0]
        text = f"Bounce {bounce.get('bounceType', '?')}/{bounce.get('bounceSubType', '?')}"
        if first.get("emailAddress"):
            text += f": {first['emailAddress']}"
        if first.get("diagnosticCode"):
            text += f": {first['diagnosticCode']}"
        return text
    if kind == "Complaint":
        complaint = event.get("complaint") or {}
        who = ", ".join(r.get("emailAddress", "?") for r in complaint.get("complainedRecipients") or [])
        return f"Complaint ({complaint.get('complaintFeedbackType', 'unspecified')}) from {who or 'a recipient'}"
    if kind == "Reject":
        return f"Rejected by SES: {(event.get('reject') or {}).get('reason', 'no reason given')}"
    return None


def handle(body, now=None):
    """The webhook's whole job; returns (http_status, short message). Raises nothing for bad input."""
    try:
        envelope = parse(body)
        verify(envelope, now)
        if envelope["Type"] == "SubscriptionConfirmation":
            confirm_subscription(envelope)
            return 200, "subscription confirmed"
        if envelope["Type"] == "UnsubscribeConfirmation":
            log.warning("SNS unsubscribed this endpoint from %s", envelope["TopicArn"])
            return 200, "unsubscribe noted"
        kind, event = ses_event(envelope)
        try:
            outcome = apply(envelope["MessageId"], kind, event)
        except (AttributeError, TypeError, KeyError, ValueError):
            raise Rejected(400, "malformed SES event") from None
    except Rejected as exc:
        log.warning("SNS notification refused (%d): %s", exc.status, exc)
        return exc.status, str(exc)
    if outcome == "duplicate":
        return 409, "notification already processed"
    log.info("SES %s for %s: %s", kind, event["mail"].get("messageId"), outcome)
    return 200, outcome


def apply_simulated(claim) -> str:
    """The relay job's SES call for a simulated message (core/simulator.py): record it sent under a
    simulated id, then apply each recipient's outcome as an SES event (statuses only move up, as
    with real events). Returns the simulated SES id."""
    row = claim.row
    ses_id = simulator.ses_id_for(row.public_id)
    outbound.record_sent(claim, ses_id)
    for key, kind, event in simulator.outcome_events(row.public_id, json.loads(row.recipients), claim.attempt):
        apply(key, kind, event, simulated=True)
    return ses_id
