"""A typed Python client for the Inboxlayer REST API (standard library only).

    from inboxlayer_client import Inboxlayer, QuotaExceeded

    client = Inboxlayer("https://mail.example.com", "il_...")
    sent = client.send("agent@example.com", to=["bob@example.com"], subject="Hi", text="Hello",
                       attachments=[Attachment.from_path("report.pdf")], idempotency_key="run-42")
    row = client.wait_for_outbound(sent["id"])          # {"status": "sent", ...}

Every refusal is an ``ApiError`` subclass carrying the API's status, error code and message
(``QuotaExceeded.reset_at``, ``RateLimited.retry_after``, ``KeyScope``...); a network failure,
a redirect or a non-JSON answer is a ``TransportError``. 429 ``rate_limited`` and 503 answers
are retried after their ``Retry-After`` (bounded: ``max_retries`` times, ``max_retry_wait``
seconds each). The client refuses plain http to anything but this machine (the token travels
in every request) and follows no redirect (it would resend the token wherever it points).

The CLI's client commands (cli/client.py) and the MCP tools (inboxlayer_client/mcp_server.py) use
this module: it is the project's one HTTP client. docs/agents.md is its reference.
"""
import base64
import datetime
import ipaddress
import json
import mimetypes
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

# The lifecycle's own lists (stdlib-only module).
from core.outbound_vocabulary import FINAL
from core.outbound_vocabulary import SENT
from core.outbound_vocabulary import STATUSES

__all__ = ["Inboxlayer", "Attachment", "InboxlayerError", "TransportError", "ApiError", "Unauthorized",
           "KeyScope", "NotFound", "InvalidRequest", "QuotaExceeded", "RateLimited", "TemporaryFailure",
           "WaitTimeout", "FINAL", "STATUSES", "check_url", "is_loopback"]

TIMEOUT = 120  # seconds per request; a 25 MB upload on a slow link takes a while
USER_AGENT = "inboxlayer-python/1"
MAX_RETRIES = 3  # extra attempts after a 429 rate_limited or a 503
MAX_RETRY_WAIT = 30.0  # seconds: a longer Retry-After (the daily quota's) is an error, not a wait
POLL_INTERVAL = 1.0  # seconds between status requests in wait_for_outbound


# -- errors ---------------------------------------------------------------------------------------

class InboxlayerError(Exception):
    """Base of every error this client raises."""


class TransportError(InboxlayerError):
    """No usable answer: unreachable, timed out, redirected, not JSON, or a refused URL."""


class ApiError(InboxlayerError):
    """The API refused the request: ``status`` (HTTP), ``code`` (its stable error code), ``message``."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.retry_after = _seconds(self.headers.get("Retry-After"))


class Unauthorized(ApiError):
    """401: the token is unknown, revoked or malformed."""


class KeyScope(ApiError):
    """403 ``key_scope`` / ``key_expired``: the API key's permissions, inboxes or expiry do not
    cover the request (a scoped key cannot tell another inbox from a missing one)."""


class NotFound(ApiError):
    """404: no such outbound email, message or route in this account."""


class InvalidRequest(ApiError):
    """422: a field is invalid; ``message`` names it."""


class RateLimited(ApiError):
    """429 ``rate_limited`` (and the retried-out 503): ``retry_after`` seconds to wait."""


class QuotaExceeded(ApiError):
    """429 ``quota_exceeded`` / ``key_limit_exceeded`` / ``new_recipient_limit``: a daily limit is
    used up; ``reset_at`` (aware UTC datetime) is when it starts over (00:00 UTC)."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(status, code, message, headers)
        reset = _seconds(self.headers.get("X-RateLimit-Reset"))
        if reset is not None:
            self.reset_at = datetime.datetime.fromtimestamp(reset, datetime.timezone.utc)
        elif self.retry_after is not None:
            self.reset_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=self.retry_after)
        else:
            self.reset_at = None


class TemporaryFailure(ApiError):
    """503 (or another 5xx): our side is down for a moment; try again after ``retry_after``."""


class WaitTimeout(InboxlayerError):
    """wait_for_outbound gave up: ``row`` is the last status seen."""

    def __init__(self, outbound_id, row, timeout):
        super().__init__(f"{outbound_id} is still {row['status']} after {timeout:g}s")
        self.row = row


QUOTA_CODES = ("quota_exceeded", "key_limit_exceeded", "new_recipient_limit")
KEY_CODES = ("key_scope", "key_expired")


def error_for(status, code, message, headers=None):
    """The ApiError subclass for an API error body."""
    if code in QUOTA_CODES:
        cls = QuotaExceeded
    elif code == "rate_limited":
        cls = RateLimited
    elif code in KEY_CODES:
        cls = KeyScope
    elif status == 401:
        cls = Unauthorized
    elif status == 404:
        cls = NotFound
    elif status == 422:
        cls = InvalidRequest
    elif status >= 500:
        cls = TemporaryFailure
    else:
        cls = ApiError
    return cls(status, code, message, headers)


# -- URLs -----------------------------------------------------------------------------------------

def check_url(url):
    """The base URL, refused (TransportError) unless it is https:// or plain http:// to this machine
    (loopback): the token travels in every request, and plain http elsewhere would hand it to the network."""
    try:
        parsed = urllib.parse.urlsplit(url.strip())
        scheme, hostname = parsed.scheme, parsed.hostname
    except ValueError:  # e.g. an unclosed [IPv6 literal
        scheme = hostname = None
    if scheme not in ("http", "https") or not hostname:
        raise TransportError(f"API URL {url!r} must be http(s)://host[:port]")
    if scheme == "http" and not is_loopback(hostname):
        raise TransportError(f"refusing to send the API token over plain http to {hostname}: use "
                             f"https://{parsed.netloc} (plain http is allowed only for localhost, 127.0.0.0/8 and ::1)")
    return url.strip().rstrip("/")


def is_loopback(hostname):
    if hostname.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would resend the Authorization header to wherever it points.
    The 3xx surfaces as an HTTPError and becomes a TransportError naming the new location."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


# -- attachments ----------------------------------------------------------------------------------

@dataclass
class Attachment:
    filename: str
    content: bytes
    content_type: str | None = None

    @classmethod
    def from_path(cls, path, content_type=None):
        path = Path(path)
        return cls(path.name, path.read_bytes(), content_type)

    def to_json(self):
        content_type = self.content_type or mimetypes.guess_type(self.filename)[0] or "application/octet-stream"
        return {"filename": self.filename, "content_type": content_type,
                "content": base64.b64encode(self.content).decode("ascii")}


# -- the client -----------------------------------------------------------------------------------

class Inboxlayer:
    """The REST API at ``api_url`` with ``token`` (an API key: its scope limits what this client can do)."""

    def __init__(self, api_url, token, timeout=TIMEOUT, max_retries=MAX_RETRIES, max_retry_wait=MAX_RETRY_WAIT,
                 user_agent=USER_AGENT, sleep=time.sleep, allow_plain_http=False):
        """``allow_plain_http``: skip the https rule, for a server calling its own local address only."""
        self.base_url = api_url.strip().rstrip("/") if allow_plain_http else check_url(api_url)
        self.token = token.strip()
        self.timeout, self.max_retries, self.max_retry_wait = timeout, max_retries, max_retry_wait
        self.user_agent = user_agent
        self._sleep = sleep

    # The resources.

    def send(self, inbox, to=(), subject="", text=None, html=None, cc=(), bcc=(), reply_to=None, headers=None,
             attachments=(), idempotency_key=None):
        """POST /v1/inboxes/{inbox}/send; returns the OutboundEmail (``status`` queued, or sandboxed).
        ``attachments``: Attachment objects or file paths. With ``idempotency_key`` a retry of the
        same request returns the first answer instead of sending twice."""
        body = {"to": list(to or []), "subject": subject}
        optional = {"cc": list(cc or []), "bcc": list(bcc or []), "reply_to": reply_to, "headers": dict(headers or {})}
        body.update({name: value for name, value in optional.items() if value})
        body.update({name: value for name, value in (("text", text), ("html", html)) if value is not None})
        if attachments:
            body["attachments"] = [(a if isinstance(a, Attachment) else Attachment.from_path(a)).to_json()
                                   for a in attachments]
        return self.send_raw(inbox, json.dumps(body).encode(), idempotency_key=idempotency_key)

    def send_raw(self, inbox, body, idempotency_key=None, length=None):
        """POST an already-encoded JSON request body (bytes, or a binary file of ``length`` bytes).

        A bytes body may be retried (429, 503): without an ``idempotency_key`` it gets one of its
        own, so a retry after a 503 that a proxy gave once the server had stored the message replays
        that message instead of sending it twice."""
        if idempotency_key is None and isinstance(body, bytes):
            idempotency_key = f"client-{uuid.uuid4().hex}"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", f"/v1/inboxes/{_segment(inbox)}/send", body, headers, length=length)

    def get_outbound(self, outbound_id):
        """GET /v1/outbound/{id}: status, recipients, attempts, last error and its event history."""
        return self.request("GET", f"/v1/outbound/{_segment(outbound_id)}")

    def list_outbound(self, status=None, inbox=None, limit=None, cursor=None):
        """GET /v1/outbound: a page {data, has_more, next_cursor}, newest first."""
        return self.get("/v1/outbound", status=status, inbox=inbox, limit=limit, cursor=cursor)

    def wait_for_outbound(self, outbound_id, until=(SENT,), timeout=300.0, interval=POLL_INTERVAL, on_poll=None):
        """Poll until the status is in ``until`` or final (delivered, bounced, complained, failed,
        sandboxed); return the row. WaitTimeout after ``timeout`` seconds (None: no limit).
        ``on_poll(row)`` is called with every row seen."""
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            row = self.get_outbound(outbound_id)
            if on_poll:
                on_poll(row)
            if row["status"] in until or row["status"] in FINAL:
                return row
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(outbound_id, row, timeout)
            self._sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))

    def list_sent(self, inbox, limit=None, cursor=None):
        """GET /v1/inboxes/{inbox}/messages: the Sent folder, a page {data, has_more, next_cursor}."""
        return self.get(f"/v1/inboxes/{_segment(inbox)}/messages", folder="sent", limit=limit, cursor=cursor)

    def read_sent_message(self, inbox, message_id):
        """GET /v1/inboxes/{inbox}/messages/{id}: headers, text and HTML bodies, attachments listed."""
        return self.request("GET", f"/v1/inboxes/{_segment(inbox)}/messages/{int(message_id)}")

    def account(self):
        """GET /v1/account: plan, today's quota (used, limit, left, resets_at) and the send rate."""
        return self.request("GET", "/v1/account")

    usage = account

    def list_events(self, after=None, type=None, inbox=None, limit=None):
        """GET /v1/events: events after the cursor ``after`` (oldest first), a page
        {data, has_more, next_cursor}; pass next_cursor back to read on."""
        return self.get("/v1/events", after=after, type=type, inbox=inbox, limit=limit)

    # The wire.

    def get(self, path, **query):
        query = {k: v for k, v in query.items() if v is not None}
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        return self.request("GET", path)

    def post_json(self, path, data, headers=None):
        return self.request("POST", path, json.dumps(data).encode(), headers)

    def request(self, method, path, body=None, headers=None, length=None):
        """Send one request; return the decoded JSON (None for 204). ``body`` is bytes or a binary
        file (then ``length`` is its size; a file body is never retried). 429 rate_limited and 503
        are retried after Retry-After (at most max_retries times, each wait at most max_retry_wait)."""
        attempt = 0
        while True:
            try:
                return self._request_once(method, path, body, headers, length)
            except (RateLimited, TemporaryFailure) as exc:
                wait = exc.retry_after if exc.retry_after is not None else 1.0
                retryable = exc.status in (429, 503) and (body is None or isinstance(body, bytes))
                if not retryable or attempt >= self.max_retries or wait > self.max_retry_wait:
                    raise
                attempt += 1
                self._sleep(wait)

    def _request_once(self, method, path, body, headers, length):
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", self.user_agent)
        if body is not None:
            request.add_header("Content-Type", "application/json")
            request.add_header("Content-Length", str(length if length is not None else len(body)))
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with _opener.open(request, timeout=self.timeout) as response:
                if response.status == 204:  # No Content (a DELETE)
                    return None
                return self._decode(response.read(), response.status)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                location = urllib.parse.urljoin(self.base_url + path, exc.headers.get("Location") or "")
                raise TransportError(f"the API at {self.base_url} redirected {method} {path} to {location} "
                                     f"(HTTP {exc.code}); not following it with the token: if that is the API, "
                                     "use its address as --api-url") from None
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            raise TransportError(f"cannot reach the API at {self.base_url}: {exc.reason}") from None
        except (socket.timeout, TimeoutError):
            raise TransportError(f"the API at {self.base_url} did not answer within {self.timeout}s") from None
        except OSError as exc:
            raise TransportError(f"connection to the API at {self.base_url} failed: {exc}") from None

    def _decode(self, raw, status):
        try:
            return json.loads(raw)
        except ValueError:
            raise TransportError(f"the server at {self.base_url} answered HTTP {status} with something that is "
                                 "not JSON; is --api-url the Inboxlayer API?") from None


def _segment(value):
    return urllib.parse.quote(str(value).strip(), safe="@")


def _seconds(value):
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _api_error(exc):
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    try:
        error = json.loads(raw)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"{exc.reason or 'request failed'}"
    return error_for(exc.code, code, message, dict(exc.headers or {}))
