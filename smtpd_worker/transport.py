"""A thin SES v2 wrapper: send the raw bytes of one message and classify what went wrong.

``SendEmail`` with ``Content.Raw`` (v1 ``SendRawEmail`` caps at 10 MB; v2 takes 25 MB+). The
envelope recipients (Bcc included) go in ``Destination``; the bytes carry no Bcc header.
Retries are not botocore's business here (``ses.max_attempts_per_call`` defaults to 1): each
try is ours, recorded as an OutboundEvent, so users see one truthful history.
"""
import email.utils
import importlib
import logging
import os
import threading
from email.parser import BytesHeaderParser
from email.policy import compat32

from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError
from botocore.exceptions import ConnectionClosedError
from botocore.exceptions import ConnectTimeoutError
from botocore.exceptions import EndpointConnectionError
from botocore.exceptions import ReadTimeoutError

import settings
from core import metrics
from core import ses

log = logging.getLogger(__name__)

# Names a "module:function" called with each new SES client, so tests can register botocore event
# hooks (throttling, slow calls) inside a worker process. Only the test suite sets it.
FAULT_PLAN_ENV = "RELAY_FAULT_PLAN"

# SES v2 error codes worth another try later; everything else with a 4xx status is permanent.
RETRYABLE_CODES = {
    "TooManyRequestsException",  # 429: sending rate exceeded
    "Throttling",
    "ThrottlingException",
    "LimitExceededException",  # daily quota or a service limit; lifts with time
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
}
BCC_HEADERS = (b"bcc", b"resent-bcc")  # RFC 5322 3.6.3 and 3.6.6: blind copies never travel
# SES obeys X-SES-* fields in raw mail (configuration set, source/from/return-path ARNs, tags):
# a user's message must not pick another identity's authorisation or escape our event set.
SES_CONTROL_PREFIX = b"x-ses-"
# SES takes at most 50 recipients per message, and for raw mail its documentation counts the
# To/Cc header addresses too (so does moto); a call carries 50 minus those, at least one.
SES_MAX_RECIPIENTS = 50


class RelayError(Exception):
    """SES did not accept the message. ``retryable`` says whether another try may succeed."""

    def __init__(self, code, message, retryable, status=None):
        super().__init__(f"{code}: {message}" if message else code)
        self.code, self.message, self.retryable, self.status = code, message, retryable, status

    def as_detail(self):
        return {"code": self.code, "message": self.message, "retryable": self.retryable, "status": self.status}


_client = None
_client_lock = threading.Lock()


def client():
    """The process's SES v2 client (boto3 clients are thread-safe; creating one is not cheap)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = _new_client(settings.current())
        return _client


def reset_client():
    """Forget the cached client (settings changed: tests, or a worker re-configured)."""
    global _client
    with _client_lock:
        _client = None


def _new_client(config):
    # One HTTP connection kept per job in flight (relay.concurrency share the client).
    made = ses.new_client("relay", config.ses, max_pool_connections=config.relay.concurrency)
    plan = os.environ.get(FAULT_PLAN_ENV)
    if plan:
        module_name, _, function_name = plan.partition(":")
        log.warning("SES fault plan %s installed (tests only)", plan)
        getattr(importlib.import_module(module_name), function_name)(made)
    return made


def send_raw(mail_from, recipients, data, tags=None):
    """Hand ``data`` (bytes) to SES for ``recipients``; return SES's MessageId or raise RelayError."""
    request = {
        "FromEmailAddress": mail_from,
        "Destination": {"ToAddresses": list(recipients)},
        "Content": {"Raw": {"Data": data}},
    }
    configuration_set = settings.current().ses.configuration_set
    if configuration_set:
        request["ConfigurationSetName"] = configuration_set
    if tags:
        request["EmailTags"] = [{"Name": k, "Value": v} for k, v in tags.items()]
    try:
        with metrics.RELAY_LATENCY.time():
            return client().send_email(**request)["MessageId"]
    except ClientError as exc:
        raise classify_client_error(exc) from exc
    except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, ReadTimeoutError) as exc:
        # A read timeout may hide an accepted message: the retry is the at-least-once window.
        raise RelayError(type(exc).__name__, str(exc), retryable=True) from exc
    except BotoCoreError as exc:
        raise RelayError(type(exc).__name__, str(exc), retryable=True) from exc


def classify_client_error(exc):
    error = exc.response.get("Error", {})
    code = error.get("Code") or "Unknown"
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    retryable = code in RETRYABLE_CODES or (status is not None and status >= 500)
    return RelayError(code, error.get("Message", ""), retryable=retryable, status=status)


def strip_for_relay(stream):
    """The message bytes from ``stream`` with every Bcc/Resent-Bcc field and every X-SES-* control
    field (and their folded continuation lines) removed from the header section; the body is
    untouched."""
    out = []
    dropping = False
    while True:
        line = stream.readline()
        if not line:
            return b"".join(out)
        if line in (b"\r\n", b"\n"):
            out.append(line)
            break
        if line[:1] in (b" ", b"\t"):  # a folded continuation belongs to the field above
            if not dropping:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].rstrip(b" \t").lower() if b":" in line else None
        dropping = name is not None and (name in BCC_HEADERS or name.startswith(SES_CONTROL_PREFIX))
        if not dropping:
            out.append(line)
    out.append(stream.read())
    return b"".join(out)


def recipient_batches(recipients, data):
    """Split the envelope recipients into SendEmail-sized lists (see SES_MAX_RECIPIENTS).

    Deterministic for a given row, so a retry can skip the batches SES already accepted."""
    if len(recipients) <= 1:  # one batch whatever the headers list (a batch is at least one): skip parsing them
        return [list(recipients)]
    listed = len(header_addresses(data, ("To", "Cc")))
    size = max(1, SES_MAX_RECIPIENTS - listed)
    return [list(recipients[i:i + size]) for i in range(0, len(recipients), size)] or [[]]


def header_addresses(data, names):
    """Addresses in the named header fields of the message bytes (header section only)."""
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    headers = BytesHeaderParser(policy=compat32).parsebytes(data[:min(ends)] if ends else data)
    values = []
    for name in names:
        values.extend(str(v) for v in headers.get_all(name) or [])
    return [addr for _, addr in email.utils.getaddresses(values) if addr]
