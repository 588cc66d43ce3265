"""POST /v1/inboxes/{address}/send: JSON in, a MIME message through the SMTP submit path out."""
import calendar
import tempfile
from email.headerregistry import Address

from flask import current_app
from flask import g
from flask import jsonify
from flask import request

import models
from core import audit
from core import errors
from core import keys
from core import quota
from core import recipients as recipient_rules
from core import submit
from core.errors import OUTAGES
from core.mail import MimeError
from core.mail import build_message
from core.mail import send_request
from core.mail import write_message
from webapp.api.auth import owned_inbox
from webapp.api.errors import ApiError
from webapp.api.errors import Invalid
from webapp.api.errors import handle_submit_error
from webapp.api.inboxes import quota_json
from webapp.api.outbound import outbound_json
from webapp.api.validation import canonical_digest
from webapp.api.validation import json_body
from webapp.views import app_settings

MAX_IDEMPOTENCY_KEY = submit.MAX_IDEMPOTENCY_KEY  # characters, the column's width
# The JSON body may be twice the message limit: JSON escapes text (\uXXXX) that MIME encodes more
# tightly. Attachments are base64 in both, so their size is about the same in either.
BODY_LIMIT_FACTOR = 2
BASE64_LINE_BYTES = 57  # input bytes per base64 line: 76 characters + CRLF = 78 bytes (RFC 2045 6.8)
BASE64_LINE_SIZE = 78


def send(address):
    try:
        inbox = owned_inbox(address, keys.SEND)
    except errors.KeyRefused as exc:
        audit.record(g.actor, "send", "refused", exc.code, (address or "")[:320])
        raise
    try:
        response = _send(inbox)
    except errors.SubmitError as exc:
        audit.record(g.actor, "send", "refused", exc.code, inbox.address)
        response = handle_submit_error(exc)
    except ApiError as exc:
        audit.record(g.actor, "send", "refused", exc.code, inbox.address)
        raise
    if response.status_code == 202:
        audit.record(g.actor, "send", "accepted", "replayed" if "Idempotent-Replayed" in response.headers else "",
                     f"{response.get_json()['id']} from {inbox.address}")
    if response.status_code in (200, 202, 429):
        _rate_limit_headers(response)
    return response


def _send(inbox):
    smtp = app_settings().smtp
    max_size = smtp.max_message_size
    body = json_body(max_size * BODY_LIMIT_FACTOR, f"; a message may be at most {max_size / 2**20:g} MB as sent, "
                                                   "i.e. after base64 encoding of attachments")
    at_least = size_lower_bound(body)
    if at_least > max_size:  # refused before base64-decoding anything or building the message
        raise ApiError(413, "message_too_large", too_large(at_least, max_size, estimated=True))
    key = _idempotency_key()
    request_hash = canonical_digest(inbox.address.encode() + b"\n", body)
    parsed = send_request(body, smtp.max_recipients)
    del body  # the decoded attachments are in ``parsed``; do not hold both
    if key is not None:
        earlier = submit.earlier_send(g.user, key, request_hash)
        if earlier is not None:
            return _accepted(earlier, replayed=True)
    recipients = parsed.envelope_recipients()
    submit.check_sender(inbox, inbox.address)  # a custom domain must still be verified
    recipient_rules.check_send(g.user, inbox, recipients, sandbox=g.token.sandbox)  # paused, suppressed, policy, cap
    keys.check_key_limit(g.token, len(recipients))
    if not g.token.sandbox:  # a sandbox key's messages are not charged
        quota.check_quota(g.user, len(recipients))
    quota.check_rate(g.user)
    try:
        message = build_message(_sender(inbox), parsed, inbox.address.rsplit("@", 1)[1])
    except MimeError as exc:
        field, _, reason = str(exc).partition(": ")
        raise Invalid(field, reason) from None
    except (ValueError, TypeError) as exc:  # the email package's own refusals, should validation miss one
        raise ApiError(422, "invalid_request", f"The message could not be built: {exc}"[:300]) from None
    started = models.utcnow()
    with tempfile.TemporaryFile(prefix="inboxlayer-api-") as spool:
        try:
            size = write_message(message, spool)
        except (ValueError, TypeError, UnicodeError) as exc:
            raise ApiError(422, "invalid_request", f"The message could not be built: {exc}"[:300]) from None
        if size > max_size:
            raise ApiError(413, "message_too_large", too_large(size, max_size))
        outbound = submit.submit(g.user, inbox, inbox.address, recipients, spool, via="api",
                                 idempotency_key=key, request_hash=request_hash if key else None, key=g.token)
    return _accepted(outbound, replayed=outbound.created_at < started)


def base64_size(length):
    """Bytes ``length`` bytes take in a MIME part: base64 in lines of 76 characters + CRLF."""
    full, rest = divmod(length, BASE64_LINE_BYTES)
    return full * BASE64_LINE_SIZE + (4 * -(-rest // 3) + 2 if rest else 0)


def size_lower_bound(body):
    """A lower bound of the built message's size, from the request as sent (nothing decoded):
    each attachment as base64 lines, text and html at one byte a character (no copy is encoded).
    Headers and the text parts' encoding come on top, so a message this bound refuses could never
    have fitted."""
    total = 0
    for name in ("text", "html"):
        if isinstance(body.get(name), str):
            total += len(body[name])
    items = body.get("attachments")
    for item in items if isinstance(items, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            decoded = len(content) // 4 * 3 - len(content[-2:]) + len(content[-2:].rstrip("="))
            total += base64_size(max(decoded, 0))
    return total


def too_large(size, max_size, estimated=False):
    """The 413 text: the limit is on the message as sent, after base64, so say what fits."""
    ceiling = max_size * BASE64_LINE_BYTES / BASE64_LINE_SIZE
    return (f"Message size {'at least ' if estimated else ''}{size} bytes exceeds the limit of {max_size} bytes "
            f"({max_size / 2**20:g} MB). The limit applies to the message as sent, i.e. after base64 encoding "
            f"of attachments (4/3 of their size plus line breaks), so attachments can total about "
            f"{ceiling / 2**20:.1f} MB")


def _sender(inbox):
    local, domain = inbox.address.rsplit("@", 1)
    return Address(display_name=inbox.display_name, username=local, domain=domain)


def _idempotency_key():
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not submit.valid_idempotency_key(key):
        raise ApiError(400, "invalid_idempotency_key",
                       f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return key


def _accepted(outbound, replayed):
    outbound = models.OutboundEmail.get_by_id(outbound.id)  # fresh status, joined fields
    response = jsonify(outbound_json(outbound))
    response.status_code = 202
    response.headers["Location"] = f"/v1/outbound/{outbound.public_id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _rate_limit_headers(response):
    """X-RateLimit-*: the daily send quota (shared with SMTP), see docs/api.md."""
    try:
        allowance = quota_json(g.user)
    except OUTAGES as exc:  # headers are informative; a failed lookup must not cost the send
        current_app.logger.warning("quota headers unavailable: %s", exc)
        return
    limit, remaining = allowance["limit"], allowance["remaining"]
    if g.token.daily_limit is not None:  # the key's own cap, when it binds first
        key_remaining = max(g.token.daily_limit - keys.key_sends_today(g.token.id), 0)
        if key_remaining < remaining or g.token.sandbox:
            limit, remaining = g.token.daily_limit, key_remaining
    response.headers["X-RateLimit-Limit"] = str(limit)
    response.headers["X-RateLimit-Remaining"] = str(remaining)
    response.headers["X-RateLimit-Reset"] = str(calendar.timegm(quota.next_reset().timetuple()))
