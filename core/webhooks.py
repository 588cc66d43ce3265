"""Webhook endpoints and the delivery of events to them (Standard Webhooks, standardwebhooks.com).

Endpoints: per account, a URL, an event-type filter (empty = every type), an optional inbox filter,
an enabled flag and a signing secret (``whsec_`` + base64 of 32 random bytes), shown once when
made or rotated. After a rotation the previous secret signs too (a second ``v1,`` signature) for
``SECRET_OVERLAP``, so receivers can switch without losing a delivery.

Deliveries: writing an event writes one ``WebhookDelivery`` per endpoint that takes it
(core/events.py), in the transaction of the state change. From there the database is the truth
and Redis only carries hints, as for the relay:

- ``dispatch_due`` (a periodic task, every ``webhooks.dispatch_interval``) enqueues the due rows
  it has not handed out within the last ``webhooks.lease`` (``dispatched_at``), so a lost job (a
  flushed Redis, a SIGKILLed worker) is handed out again one lease later.
- ``deliver`` (the RQ job ``smtpd_worker.deliveries.deliver_webhook``) *claims* the row first (a
  conditional UPDATE: attempts + 1, ``next_attempt_at`` = now + lease), POSTs, then records the
  attempt only while the claim is still its own. A second run of the same job finds nothing due.
- 2xx: delivered. 410 Gone: the endpoint is disabled. Anything else (a timeout, a refused
  connection, a redirect, 5xx, 4xx): retried after ``webhooks.retry_schedule`` (5 s, 5 min,
  30 min, 2 h, 5 h, 10 h, 10 h by default, about a day and a half), then failed. An endpoint
  whose deliveries have failed for ``webhooks.disable_after`` with no success is disabled and its
  owner is emailed through our own relay (``notify_owner``).

At-least-once: a worker that dies after the receiver answered and before the attempt is recorded
sends the event again; the ``webhook-id`` (the event id, ``evt_...``) is the same every time,
replays included, so receivers de-duplicate on it.

SSRF: a URL must resolve only to public addresses (``address_refused``), checked when it is saved
and again at each delivery, where the request goes to the address that was checked (the Host header
and TLS SNI carry the name), so a DNS answer that changes between check and connect (rebinding)
cannot reach an internal address. ``webhooks.allow_loopback`` (development, tests; ``inboxlayer
dev``) admits loopback addresses and plain http; in production only https is accepted.
"""
import base64
import datetime
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import re
import secrets
import socket
import ssl
import time
from urllib.parse import urlsplit

import dns.exception
import dns.resolver

import models
import settings
from core import domains
from core import event_vocabulary as vocabulary
from core import events
from core import ids
from core import outbox

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
SECRET_OVERLAP = datetime.timedelta(hours=24)  # a rotated-out secret still signs this long
CONNECT_TIMEOUT = 5.0  # seconds
TOTAL_TIMEOUT = 15.0  # seconds, connect to last byte of the response
MAX_RESPONSE_READ = 64 * 1024  # bytes of a response body read at most (then the connection is dropped)
MAX_RESPONSE_KEPT = 1000  # characters of a response body kept in the delivery log
MAX_URL = 2048  # characters
DISPATCH_BATCH = 500  # deliveries one dispatch pass hands out
REPLAY_MAX = 10000  # events one "replay since" re-delivers
USER_AGENT = "Inboxlayer-Webhooks/1"
DELIVER_JOB = "smtpd_worker.deliveries.deliver_webhook"


class WebhookError(ValueError):
    """An endpoint cannot be saved as asked; the message is user-facing. ``field`` names the input."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field


# -- settings ------------------------------------------------------------------------------------

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def retry_delays(schedule=None):
    """``webhooks.retry_schedule`` ("5s 5m 30m 2h 5h 10h 10h") as seconds: the wait after attempt 1, 2, ..."""
    schedule = settings.current().webhooks.retry_schedule if schedule is None else schedule
    delays = []
    for part in schedule.split():
        match = re.fullmatch(r"(\d+)([smhd]?)", part)
        if not match:
            raise ValueError(f"webhooks.retry_schedule: {part!r} is not a duration like 5s, 30m or 2h")
        delays.append(int(match.group(1)) * UNITS[match.group(2) or "s"])
    return delays


# -- SSRF guard ----------------------------------------------------------------------------------

def address_refused(ip, allow_loopback):
    """Why ``ip`` may not be connected to, or None. Only global unicast addresses pass (loopback
    too when allowed): private, shared (CGNAT), link-local (169.254.169.254, the cloud metadata
    service), multicast, reserved, unspecified and the documentation ranges are refused, IPv4 seen
    through IPv6 (mapped, 6to4, NAT64) included."""
    ip = ipaddress.ip_address(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (ip.sixtofour if ip.sixtofour else None)
        if embedded is None and ip in ipaddress.ip_network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_refused(embedded, allow_loopback)
    if ip.is_loopback:
        return None if allow_loopback else f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address (cloud metadata lives there)"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return f"{ip} is not a unicast address"
    if ip.is_private or not ip.is_global:
        return f"{ip} is a private or internal address"
    return None


def resolve(host):
    """The addresses of ``host``: itself when it is an IP literal, else its A and AAAA records from
    the resolver the domain checks use (``dns.resolver``; the system's when empty)."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    resolver = domains.make_resolver()
    found = []
    for rdtype in ("A", "AAAA"):
        try:
            found += [r.address for r in resolver.resolve(host, rdtype)]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            continue
        except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
            raise WebhookError("url", f"{host} does not resolve: {exc.__class__.__name__}") from None
    return found


def resolve_checked(host, port, allow_loopback):
    """Resolve ``host`` and check EVERY address it has; returns the addresses to connect to.
    Raises WebhookError("url", ...) naming the first refused address or the resolution failure."""
    addresses = []
    for address in resolve(host):
        reason = address_refused(address, allow_loopback)
        if reason:
            raise WebhookError("url", f"{host} resolves to {reason}; webhooks go to public addresses only")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise WebhookError("url", f"{host} does not resolve")
    return addresses


def check_url(url, config=None):
    """(scheme, host, port, path, addresses) of a URL webhooks may be sent to (every address the
    host resolves to checked), or WebhookError."""
    scheme, host, port, path = _parse(url, settings.typed(config))
    return scheme, host, port, path, resolve_checked(host, port, settings.typed(config).webhooks.allow_loopback)


def _parse(url, hooks):
    url = (url or "").strip()
    if not url or len(url) > MAX_URL or not url.isprintable() or any(c.isspace() for c in url):
        raise WebhookError("url", f"must be an http(s) URL of at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookError("url", "is not a valid URL") from None
    plain_ok = hooks.webhooks.allow_loopback or hooks.server.environment != "production"
    if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not plain_ok):
        raise WebhookError("url", "must use https" if parts.scheme == "http" else "must be an https URL")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise WebhookError("url", "needs a host name and no user:password@")
    port = port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


# -- signing (Standard Webhooks) -------------------------------------------------------------------

def new_secret():
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret, msg_id, timestamp, body):
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body" keyed with the secret's bytes>``."""
    key = base64.b64decode(secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret)
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signing_secrets(endpoint, now=None):
    now = now or models.utcnow()
    found = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_until and endpoint.previous_secret_until > now:
        found.append(endpoint.previous_secret)
    return found


def signed_headers(endpoint, msg_id, body, now=None):
    timestamp = str(int(time.time()))
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp,
            "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in signing_secrets(endpoint, now)),
            "Content-Type": "application/json", "User-Agent": USER_AGENT}


# -- endpoints -------------------------------------------------------------------------------------

def _types_column(types):
    if types is None or list(types) == []:
        return ""
    if not isinstance(types, (list, tuple)) or not all(isinstance(t, str) for t in types):
        raise WebhookError("events", "must be a list of event types")
    unknown = [t for t in types if t not in vocabulary.EVENT_TYPES]
    if unknown:
        raise WebhookError("events", f"unknown event type {unknown[0]!r}; known: {', '.join(vocabulary.EVENT_TYPES)}")
    return "," + ",".join(dict.fromkeys(types)) + ","


def event_types(endpoint):
    """The endpoint's filter as a list (empty = every type)."""
    return [t for t in endpoint.event_types.split(",") if t]


def create_endpoint(user, url, types=None, inbox=None, enabled=True, config=None):
    """Save a new endpoint (URL checked, SSRF guard included). Returns (endpoint, secret)."""
    check_url(url, config)
    column = _types_column(types)
    limit = settings.typed(config).webhooks.max_endpoints
    with models.db.atomic():
        count = models.WebhookEndpoint.select().where(models.WebhookEndpoint.user == user).count()
        if count >= limit:
            raise WebhookError("url", f"an account may have at most {limit} webhook endpoints")
        secret = new_secret()
        endpoint = models.WebhookEndpoint.create(public_id=ids.new_webhook_id(), user=user, url=url.strip(),
                                                 event_types=column, inbox=inbox, enabled=bool(enabled),
                                                 secret=secret)
    return endpoint, secret


def update_endpoint(endpoint, url=None, types=None, inbox=..., enabled=None, config=None):
    """Change what is given (``inbox=None`` clears the filter; ``...`` keeps it). Re-enabling
    clears the disabled reason and the failure streak."""
    changes = {"updated_at": models.utcnow()}
    if url is not None:
        check_url(url, config)
        changes["url"] = url.strip()
    if types is not None:
        changes["event_types"] = _types_column(types)
    if inbox is not ...:
        changes["inbox"] = inbox
    if enabled is not None:
        changes["enabled"] = bool(enabled)
        if enabled:
            changes.update(disabled_reason=None, failing_since=None)
    with models.db.atomic():
        models.WebhookEndpoint.update(**changes).where(models.WebhookEndpoint.id == endpoint.id).execute()
    return models.WebhookEndpoint.get_by_id(endpoint.id)


def delete_endpoint(endpoint):
    with models.db.atomic():
        models.WebhookAttempt.delete().where(models.WebhookAttempt.delivery.in_(
            models.WebhookDelivery.select(models.WebhookDelivery.id).where(
                models.WebhookDelivery.endpoint == endpoint.id))).execute()
        models.WebhookDelivery.delete().where(models.WebhookDelivery.endpoint == endpoint.id).execute()
        return models.WebhookEndpoint.delete().where(models.WebhookEndpoint.id == endpoint.id).execute()


def rotate_secret(endpoint):
    """A new secret; the old one keeps signing for SECRET_OVERLAP. Returns the new secret."""
    now = models.utcnow()
    secret = new_secret()
    with models.db.atomic():
        models.WebhookEndpoint.update(secret=secret, previous_secret=endpoint.secret,
                                      previous_secret_until=now + SECRET_OVERLAP, updated_at=now).where(
            models.WebhookEndpoint.id == endpoint.id).execute()
    return secret


def owned_endpoint(user, public_id):
    """The account's endpoint ``public_id``, or None (foreign and unknown alike)."""
    if not ids.is_webhook_id(public_id):
        return None
    return models.WebhookEndpoint.get_or_none(models.WebhookEndpoint.public_id == public_id,
                                              models.WebhookEndpoint.user == user)


# -- replay and test events --------------------------------------------------------------------------

def _redeliver(endpoint, event_ids, now):
    """Make each event's delivery to ``endpoint`` pending and due now (a new row, or the old one
    again: its log stays, its attempt count starts over)."""
    d = models.WebhookDelivery
    with models.db.atomic():
        existing = {row.event_id for row in d.select(d.event).where(d.endpoint == endpoint.id, d.event.in_(event_ids))}
        if existing:
            d.update(status=vocabulary.PENDING, attempts=0, next_attempt_at=now, dispatched_at=None,
                     completed_at=None, last_error=None).where(
                d.endpoint == endpoint.id, d.event.in_(list(existing))).execute()
        fresh = [{"event": e, "endpoint": endpoint.id, "status": vocabulary.PENDING, "attempts": 0,
                  "next_attempt_at": now, "created_at": now} for e in event_ids if e not in existing]
        for start in range(0, len(fresh), 500):
            d.insert_many(fresh[start:start + 500]).execute()
    return len(event_ids)


def replay_event(endpoint, event_public_id):
    """Deliver one of the account's events to ``endpoint`` again, with the same event id.
    Returns 1, or 0 when the account has no such event."""
    event = ids.is_event_id(event_public_id) and models.Event.get_or_none(
        models.Event.public_id == event_public_id, models.Event.user == endpoint.user_id)
    if not event:
        return 0
    return _redeliver(endpoint, [event.id], models.utcnow())


def replay_since(endpoint, since):
    """Deliver again every event since ``since`` that the endpoint's filters take. Returns how many."""
    ev = models.Event
    query = ev.select(ev.id).where(ev.user == endpoint.user_id, ev.created_at >= since,
                                   ev.type != vocabulary.WEBHOOK_TEST)
    types = event_types(endpoint)
    if types:
        query = query.where(ev.type.in_(types))
    if endpoint.inbox_id is not None:
        query = query.where(ev.inbox == endpoint.inbox_id)
    found = [row.id for row in query.order_by(ev.id).limit(REPLAY_MAX)]
    return _redeliver(endpoint, found, models.utcnow()) if found else 0


def send_test_event(endpoint):
    """A ``webhook.test`` event delivered to this endpoint only (never in the feed). Returns its id."""
    now = models.utcnow()
    public_id = ids.new_event_id()
    with models.db.atomic():
        event_id = models.Event.insert(public_id=public_id, user=endpoint.user_id, type=vocabulary.WEBHOOK_TEST,
                                       data=json.dumps({"endpoint": endpoint.public_id,
                                                        "message": "A test event from Inboxlayer"}),
                                       created_at=now).execute()
        models.WebhookDelivery.insert(event=event_id, endpoint=endpoint.id, status=vocabulary.PENDING, attempts=0,
                                      next_attempt_at=now, created_at=now).execute()
    return public_id


# -- dispatch and delivery ------------------------------------------------------------------------

def dispatch_due(now=None):
    """Hand the due deliveries not handed out within one lease to the queue. A periodic task.
    Returns how many were enqueued."""
    now = now or models.utcnow()
    d = models.WebhookDelivery
    lease = datetime.timedelta(seconds=settings.current().webhooks.lease)
    due = ((d.status == vocabulary.PENDING) & (d.next_attempt_at <= now)
           & (d.dispatched_at.is_null() | (d.dispatched_at < now - lease)))
    with models.db.connection_context():
        found = [row.id for row in d.select(d.id).where(due).order_by(d.next_attempt_at, d.id).limit(DISPATCH_BATCH)]
        if not found:
            return 0
        with models.db.atomic():
            d.update(dispatched_at=now).where(due & d.id.in_(found)).execute()
    for delivery_id in found:
        try:
            outbox.enqueue_webhook(delivery_id)
        except outbox.QueueUnavailable as exc:
            log.warning("could not enqueue webhook deliveries (handed out again in one lease): %s", exc)
            break
    return len(found)


class Claim:
    def __init__(self, delivery, endpoint, attempt, envelope):
        self.delivery, self.endpoint, self.attempt, self.envelope = delivery, endpoint, attempt, envelope


def claim(delivery_id, now=None):
    """Take a due delivery for one attempt (conditional UPDATE). None when it is not due, done,
    or another worker holds it; a delivery to a disabled endpoint is failed instead."""
    d = models.WebhookDelivery
    now = now or models.utcnow()
    lease = settings.current().webhooks.lease
    with models.db.atomic():
        taken = (d.update(attempts=d.attempts + 1, next_attempt_at=now + datetime.timedelta(seconds=lease))
                 .where(d.id == delivery_id, d.status == vocabulary.PENDING, d.next_attempt_at <= now).execute())
        if not taken:
            return None
        delivery = d.get_by_id(delivery_id)
        endpoint = models.WebhookEndpoint.get_by_id(delivery.endpoint_id)
        if not endpoint.enabled:
            d.update(status=vocabulary.FAILED, completed_at=now, next_attempt_at=None,
                     last_error=f"endpoint disabled: {endpoint.disabled_reason or 'by its owner'}").where(
                d.id == delivery_id).execute()
            return None
        return Claim(delivery, endpoint, delivery.attempts, events.by_id(delivery.event_id))


class Result:
    def __init__(self, status_code=None, latency_ms=0, response="", error=None):
        self.status_code, self.latency_ms, self.response, self.error = status_code, latency_ms, response, error

    @property
    def ok(self):
        return self.status_code is not None and 200 <= self.status_code < 300


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address; the Host header keeps the name."""

    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), CONNECT_TIMEOUT)
        self.sock.settimeout(self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to the checked address; TLS verifies the certificate against the name (SNI)."""

    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), CONNECT_TIMEOUT)
        sock.settimeout(self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(url, body, headers, config=None):
    """POST ``body`` to ``url`` under the SSRF guard and the timeouts; never follows a redirect.
    Returns a Result (never raises for network trouble)."""
    started = time.monotonic()
    try:
        scheme, host, port, path, addresses = check_url(url, config)  # resolved and checked now,
        address = addresses[0]  # and this very address is the one connected to (no second lookup)
        kind = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        conn = kind(host, port, address, TOTAL_TIMEOUT)
        try:
            conn.request("POST", path, body=body, headers=headers)
            sock = conn.sock  # the response reads from it even after the connection lets go of it
            sock.settimeout(max(0.1, TOTAL_TIMEOUT - (time.monotonic() - started)))
            response = conn.getresponse()
            data = b""
            while len(data) < MAX_RESPONSE_READ:
                left = TOTAL_TIMEOUT - (time.monotonic() - started)
                if left <= 0:
                    raise TimeoutError("the response took longer than 15 s")
                sock.settimeout(left)
                chunk = response.read1(min(8192, MAX_RESPONSE_READ - len(data)))
                if not chunk:
                    break
                data += chunk
        finally:
            conn.close()
        text = data[:MAX_RESPONSE_KEPT * 4].decode("utf-8", "replace")[:MAX_RESPONSE_KEPT]
        return Result(response.status, _ms(started), text)
    except WebhookError as exc:
        return Result(None, _ms(started), "", f"refused: {exc}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Result(None, _ms(started), "", f"{exc.__class__.__name__}: {exc}"[:500])


def _ms(started):
    return int((time.monotonic() - started) * 1000)


def attempt(claim_):
    """Send one claimed delivery (no database connection held meanwhile)."""
    body = json.dumps(claim_.envelope, separators=(",", ":")).encode()
    headers = signed_headers(claim_.endpoint, claim_.envelope["id"], body)
    return post(claim_.endpoint.url, body, headers)


def record(claim_, result, now=None):
    """Write the attempt to the log and move the delivery on, while the claim is still ours.
    Returns "delivered", "retry", "failed", "disabled" or "lost" (the claim had moved on).
    Also returns, second, the endpoint to notify its owner about (disabled for failing), or None."""
    d, w = models.WebhookDelivery, models.WebhookEndpoint
    now = now or models.utcnow()
    ours = (d.id == claim_.delivery.id) & (d.status == vocabulary.PENDING) & (d.attempts == claim_.attempt)
    hooks = settings.current().webhooks
    notify = None
    with models.db.atomic():
        models.WebhookAttempt.create(delivery=claim_.delivery.id, attempt=claim_.attempt,
                                     status_code=result.status_code, latency_ms=result.latency_ms,
                                     response=result.response, error=result.error, created_at=now)
        common = {"last_status_code": result.status_code, "last_error": result.error, "dispatched_at": None}
        if result.ok:
            outcome = "delivered"
            moved = d.update(status=vocabulary.DELIVERED, completed_at=now, next_attempt_at=None, **common).where(
                ours).execute()
            if moved:
                w.update(failing_since=None).where(w.id == claim_.endpoint.id).execute()
        elif result.status_code == 410:
            outcome = "disabled"
            moved = d.update(status=vocabulary.FAILED, completed_at=now, next_attempt_at=None, **common).where(
                ours).execute()
            if moved:
                w.update(enabled=False, updated_at=now,
                         disabled_reason="the receiver answered 410 Gone").where(w.id == claim_.endpoint.id).execute()
        else:
            delays = retry_delays(hooks.retry_schedule)
            if claim_.attempt <= len(delays):
                outcome = "retry"
                due = now + datetime.timedelta(seconds=delays[claim_.attempt - 1])
                moved = d.update(next_attempt_at=due, **common).where(ours).execute()
            else:
                outcome = "failed"
                moved = d.update(status=vocabulary.FAILED, completed_at=now, next_attempt_at=None, **common).where(
                    ours).execute()
            if moved:
                w.update(failing_since=now).where(w.id == claim_.endpoint.id, w.failing_since.is_null()).execute()
                if outcome == "failed":
                    since = w.get_by_id(claim_.endpoint.id).failing_since
                    if since is not None and (now - since).total_seconds() >= hooks.disable_after:
                        disabled = w.update(enabled=False, updated_at=now, disabled_reason=(
                            f"every delivery failed since {since:%Y-%m-%d %H:%M} UTC")).where(
                            w.id == claim_.endpoint.id, w.enabled == True).execute()  # noqa: E712
                        if disabled:
                            notify = claim_.endpoint
        if not moved:
            return "lost", None
    return outcome, notify


def notify_owner(endpoint):
    """Email the account owner that ``endpoint`` was disabled, through our own relay: from the
    account's oldest inbox that can send, to the account's email. Returns the OutboundEmail, or
    None (no inbox, quota spent: logged; the dashboard shows the endpoint disabled either way).
    Scopes its own connections (submit does), so call it outside any."""
    import io
    from email.message import EmailMessage
    from email.utils import formatdate
    from email.utils import make_msgid

    from core import submit
    from core.errors import SubmitError

    with models.db.connection_context():
        user = models.User.get_by_id(endpoint.user_id)
        inbox = None
        for candidate in models.Inbox.select().where(models.Inbox.user == user).order_by(models.Inbox.id):
            if models.inbox_can_send(candidate)[0]:
                inbox = candidate
                break
    if inbox is None:
        log.warning("webhook endpoint %s disabled; account %s has no inbox to send the notice from",
                    endpoint.public_id, user.id)
        return None
    message = EmailMessage()
    message["From"] = inbox.address
    message["To"] = user.email
    message["Subject"] = "Inboxlayer: a webhook endpoint was disabled"
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=inbox.address.rsplit("@", 1)[1])
    message.set_content(
        f"Your webhook endpoint {endpoint.public_id} ({endpoint.url}) was disabled: every delivery to it has "
        f"failed for {settings.current().webhooks.disable_after // 3600} hours.\n\n"
        "Fix the receiver, enable the endpoint again (dashboard or PATCH /v1/webhooks/{id} with "
        '{"enabled": true}), then replay what it missed.\n')
    try:
        return submit.submit(user, inbox, inbox.address, [user.email], io.BytesIO(message.as_bytes()), via="api")
    except SubmitError as exc:
        log.warning("could not email the owner of webhook endpoint %s: %s", endpoint.public_id, exc)
        return None


# -- reading -------------------------------------------------------------------------------------------

def endpoint_json(endpoint, inbox_address=None, secret=None):
    data = {"id": endpoint.public_id, "url": endpoint.url, "events": event_types(endpoint),
            "inbox": inbox_address, "enabled": endpoint.enabled, "disabled_reason": endpoint.disabled_reason,
            "created_at": events.iso(endpoint.created_at), "updated_at": events.iso(endpoint.updated_at)}
    if secret is not None:
        data["secret"] = secret
    return data


def deliveries(endpoint, before=None, limit=20):
    """The endpoint's deliveries, newest first, each with its attempt log: (rows, has_more)."""
    d, ev = models.WebhookDelivery, models.Event
    query = d.select(d, ev).join(ev).where(d.endpoint == endpoint.id)
    if before:
        query = query.where(d.id < before)
    rows = list(query.order_by(d.id.desc()).limit(limit + 1))
    has_more = len(rows) > limit
    rows = rows[:limit]
    log_of = {row.id: [] for row in rows}
    if rows:
        a = models.WebhookAttempt
        for entry in a.select().where(a.delivery.in_(list(log_of))).order_by(a.id):
            log_of[entry.delivery_id].append(entry)
    return [(row, log_of[row.id]) for row in rows], has_more


def delivery_json(row, attempts):
    return {"id": row.id, "event": row.event.public_id, "type": row.event.type, "status": row.status,
            "attempts": row.attempts, "last_status_code": row.last_status_code, "last_error": row.last_error,
            "next_attempt_at": events.iso(row.next_attempt_at) if row.status == vocabulary.PENDING else None,
            "created_at": events.iso(row.created_at), "completed_at": events.iso(row.completed_at),
            "log": [{"attempt": a.attempt, "status_code": a.status_code, "latency_ms": a.latency_ms,
                     "response": a.response, "error": a.error, "at": events.iso(a.created_at)} for a in attempts]}

