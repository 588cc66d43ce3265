"""submit(): the ONE path by which a message enters the system, used by SMTP and the REST API.

validate headers -> write the blob -> in ONE transaction reserve quota and insert the Sent copy,
the OutboundEmail (queued) and its first event -> commit -> enqueue the relay job.
After submit() returns, the message is durable: if the enqueue failed, the reconciler finds the
queued row. Every failure before the commit raises a SubmitError and leaves nothing behind.
"""
import datetime
import email.utils
import json
import logging
import re
import secrets
from email.errors import InvalidHeaderDefect
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY

from peewee import IntegrityError
from peewee import PeeweeException

import models
import settings
from smtpd_worker import blobs
from smtpd_worker import limits
from smtpd_worker import metrics
from smtpd_worker import queue

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 1024 * 1024  # a header section larger than this is not mail, it is an attack


class SubmitError(Exception):
    """A refusal with the SMTP reply and HTTP status that describe it."""

    smtp_reply = "451 4.3.0 Temporary server error, try again later"
    http_status = 503
    code = "temporary_failure"

    def __init__(self, message=None, smtp_reply=None, retry_after=None):
        super().__init__(message or self.smtp_reply[10:])
        if smtp_reply:
            self.smtp_reply = smtp_reply
        self.retry_after = retry_after


class TemporaryFailure(SubmitError):
    pass


class QuotaExceeded(SubmitError):
    http_status = 429
    code = "quota_exceeded"

    def __init__(self, used, limit):
        text = f"Daily sending quota exceeded ({used}/{limit}, resets 00:00 UTC)"
        now = models.utcnow()
        midnight = datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time())
        super().__init__(text, f"550 5.4.5 {text}", retry_after=int((midnight - now).total_seconds()) + 1)
        self.used, self.limit = used, limit


class RateLimited(SubmitError):
    smtp_reply = "451 4.7.1 Sending rate limit exceeded, try again later"
    http_status = 429
    code = "rate_limited"


class SenderNotAllowed(SubmitError):
    smtp_reply = "550 5.7.1 Sender address not owned by authenticated inbox"
    http_status = 403
    code = "sender_not_allowed"


class DomainNotVerified(SubmitError):
    http_status = 403
    code = "domain_not_verified"

    def __init__(self, reason):
        super().__init__(reason, f"550 5.7.1 {reason}")


class BadMessage(SubmitError):
    smtp_reply = "554 5.6.0 Message is not a valid RFC 5322 message"
    http_status = 422
    code = "invalid_message"

    def __init__(self, message):
        super().__init__(message, f"554 5.6.0 {message}")


class IdempotencyConflict(SubmitError):
    http_status = 409
    code = "idempotency_conflict"


# -- checks shared by SMTP (per command) and REST (per request) -----------------------------------

def plan_of(user):
    return settings.plan_limits(settings.get(), user.plan)


def check_rate(user):
    """Take one message from the account's send rate; raise RateLimited when it is spent."""
    plan = plan_of(user)
    try:
        allowed, retry_after = limits.take_send_token(user.id, plan["send_rate_per_second"], plan["send_burst"])
    except limits.LimiterUnavailable as exc:
        raise refused(TemporaryFailure(f"rate limiter unavailable: {exc}")) from exc
    if not allowed:
        raise refused(RateLimited("Sending rate limit exceeded, try again later",
                                  retry_after=max(1, round(retry_after + 0.5))))


def quota_state(user):
    """(used today, daily limit)."""
    return models.sends_today(user), plan_of(user)["daily_send_limit"]


def check_quota(user, recipients, used=None):
    """Raise QuotaExceeded if ``recipients`` more sends would pass today's limit (no reservation).
    ``used``: today's count when the caller has just read it."""
    if used is None:
        used, limit = quota_state(user)
    else:
        limit = plan_of(user)["daily_send_limit"]
    if used + recipients > limit:
        raise refused(QuotaExceeded(used, limit))


def check_sender(inbox, address):
    """The envelope sender / From: address must be the inbox (``+tag`` allowed, case-insensitive)."""
    if not address or models.sender_key(address) != inbox.address:
        raise SenderNotAllowed()
    ok, reason = models.inbox_can_send(inbox)
    if not ok:
        raise DomainNotVerified(reason)


# -- the submit path ------------------------------------------------------------------------------

def read_header_section(spool):
    """Return the raw header section of the message in ``spool`` (through the blank line)."""
    spool.seek(0)
    lines = []
    size = 0
    while True:
        line = spool.readline(MAX_HEADER_BYTES + 1)
        size += len(line)
        if size > MAX_HEADER_BYTES:
            raise BadMessage("Header section too large")
        if not line or line in (b"\r\n", b"\n"):
            break
        lines.append(line)
    spool.seek(0)
    return b"".join(lines)


def parse_headers(raw_headers):
    return BytesHeaderParser(policy=SMTP_POLICY).parsebytes(raw_headers + b"\r\n")


def header_text(headers, name):
    try:
        value = headers.get(name)
    except Exception:  # a malformed header is the sender's business; it must not cost them the message
        return ""
    return "" if value is None else str(value)


# Any line a mail program may take for a From field, "From :" and "FROM\t:" included (RFC 5322
# obsolete syntax), which Python's parser silently skips.
FROM_FIELD_LINE = re.compile(rb"^from[ \t]*:", re.IGNORECASE | re.MULTILINE)


def from_addresses(headers, raw_headers=None):
    """The From: addresses, read strictly: a From that a recipient's mail program could read
    differently from us yields none. ``agent@ours <ceo@elsewhere>`` is an invalid address list
    that lenient parsers read as agent@ours; a second From field hidden as ``From :`` is
    another."""
    if raw_headers is not None and len(FROM_FIELD_LINE.findall(raw_headers)) > 1:
        return []
    try:
        fields = headers.get_all("From") or []
        if any(isinstance(defect, InvalidHeaderDefect) for field in fields for defect in field.defects):
            return []
        return [address.addr_spec for field in fields for address in field.addresses if address.addr_spec]
    except Exception:
        return []


def missing_headers(headers, inbox):
    """(bytes to prepend, Message-ID): add Message-ID and Date when the client left them out."""
    message_id = header_text(headers, "Message-ID").strip()
    extra = ""
    if not message_id:
        message_id = f"<{secrets.token_hex(16)}@{inbox.address.rsplit('@', 1)[1]}>"
        extra += f"Message-ID: {message_id}\r\n"
    if headers.get("Date") is None:
        extra += f"Date: {email.utils.format_datetime(datetime.datetime.now(datetime.timezone.utc))}\r\n"
    return extra.encode("ascii"), message_id


class _Prefixed:
    """A read-only stream: ``prefix`` then the rest of ``body``."""

    def __init__(self, prefix, body):
        self.prefix, self.body = prefix, body

    def read(self, size=-1):
        if size is None or size < 0:
            chunk, self.prefix = self.prefix + self.body.read(), b""
            return chunk
        if self.prefix:
            chunk, self.prefix = self.prefix[:size], self.prefix[size:]
            return chunk
        return self.body.read(size)


def refused(exc):
    """Count a refusal by its reason; returns ``exc`` for the caller to raise."""
    metrics.MESSAGES_REJECTED.labels(reason=exc.code).inc()
    return exc


def submit(user, inbox, mail_from, recipients, spool, via, idempotency_key=None, request_hash=None):
    """Accept a message for relay; return the committed OutboundEmail.

    ``spool`` is a binary file holding the whole message with CRLF line ends (SMTP DATA after
    dot-unstuffing, or the MIME built by the REST API). The caller has authenticated ``user``,
    checked it owns ``inbox`` and applied the rate limit. Raises SubmitError subclasses.
    """
    try:
        return _accept(user, inbox, mail_from, recipients, spool, via, idempotency_key, request_hash)
    except SubmitError as exc:
        raise refused(exc)


def _accept(user, inbox, mail_from, recipients, spool, via, idempotency_key, request_hash):
    check_sender(inbox, mail_from)
    raw_headers = read_header_section(spool)
    headers = parse_headers(raw_headers)
    senders = from_addresses(headers, raw_headers)
    if len(senders) != 1:
        raise SenderNotAllowed()
    check_sender(inbox, senders[0])
    prefix, message_id = missing_headers(headers, inbox)
    public_id = models.new_public_id()
    now = models.utcnow()
    blob_key = f"{now:%Y/%m/%d}/{public_id}.eml"
    try:
        size = blobs.store().put(blob_key, _Prefixed(prefix, spool))
    except blobs.BlobError as exc:
        log.error("blob write failed for %s: %s", public_id, exc)
        raise TemporaryFailure() from exc
    try:
        with models.db.connection_context():
            outbound = _commit(user, inbox, mail_from, recipients, via, public_id, blob_key, size,
                               message_id, headers, idempotency_key, request_hash)
    except SubmitError:  # quota reached, idempotency conflict: nothing was written
        _discard_blob(blob_key)
        raise
    except _Replay as replay:
        _discard_blob(blob_key)
        return replay.outbound
    except (PeeweeException, OSError) as exc:
        # A connection lost at COMMIT leaves the outcome unknown: the row may be there. Look
        # once more; if it is, the message is durable and the client deserves its 250.
        outbound = _committed_row(public_id)
        if outbound is None:
            # Keep the blob: if the commit did land after all, the relay needs it; an orphan
            # file only costs disk.
            log.error("commit failed for %s: %s", public_id, exc, extra={"outbound_id": public_id})
            raise TemporaryFailure() from exc
        log.warning("commit of %s reported %s but the row is there", public_id, exc,
                    extra={"outbound_id": public_id})
    metrics.MESSAGES_ACCEPTED.labels(via=via).inc()
    metrics.MESSAGE_BYTES.labels(via=via).inc(size)
    log.info("accepted %s via %s from %s to %d recipient(s), %d bytes", public_id, via, inbox.address,
             len(recipients), size, extra={"outbound_id": public_id})
    try:
        queue.enqueue_relay(outbound.id)
    except queue.QueueUnavailable as exc:
        # The row is committed: the reconciler will enqueue it. The 250 stays true.
        log.warning("enqueue failed for %s, left to the reconciler: %s", public_id, exc,
                    extra={"outbound_id": public_id})
    return outbound


def _committed_row(public_id):
    try:
        with models.db.connection_context():
            return models.OutboundEmail.get_or_none(models.OutboundEmail.public_id == public_id)
    except (PeeweeException, OSError):
        return None


class _Replay(Exception):
    def __init__(self, outbound):
        self.outbound = outbound


def _commit(user, inbox, mail_from, recipients, via, public_id, blob_key, size, message_id, headers,
            idempotency_key, request_hash):
    limit = plan_of(user)["daily_send_limit"]
    now = models.utcnow()
    fields = dict(
        user_id=user.id, inbox_id=inbox.id, public_id=public_id, via=via, mail_from=mail_from,
        recipients=json.dumps(list(recipients)), message_id=message_id[:998], size=size, blob_key=blob_key,
        subject=header_text(headers, "Subject")[:10000], from_addr=header_text(headers, "From")[:2000],
        to_addrs=", ".join(filter(None, (header_text(headers, "To"), header_text(headers, "Cc"))))[:10000],
        event_detail=json.dumps({"via": via, "recipients": len(recipients), "size": size}),
        idempotency_key=idempotency_key, request_hash=request_hash, now=now)
    try:
        ids = models.record_submission(fields, len(recipients), limit)
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = models.OutboundEmail.get_or_none(models.OutboundEmail.user == user,
                                                    models.OutboundEmail.idempotency_key == idempotency_key)
        if existing is None:
            raise
        if existing.request_hash != request_hash:
            raise IdempotencyConflict("This Idempotency-Key was used with a different request") from None
        raise _Replay(existing) from None
    if ids is None:
        raise QuotaExceeded(models.sends_today(user), limit)
    sent_id, outbound_id = ids
    # What the callers read, without a query to fetch back what was just written.
    return models.OutboundEmail(
        id=outbound_id, public_id=public_id, user=user, inbox=inbox, message=sent_id, via=via, mail_from=mail_from,
        recipients=fields["recipients"], status="queued", attempts=0, idempotency_key=idempotency_key,
        request_hash=request_hash, created_at=now, updated_at=now)


def _discard_blob(blob_key):
    try:
        blobs.store().delete(blob_key)
    except blobs.BlobError as exc:
        log.warning("could not remove orphan blob %s: %s", blob_key, exc)
