"""Public ids: what users see of an OutboundEmail (``ob_`` + 24 lower-case hex digits).

ONE pattern for every place that recognises one: the dashboard and API routes (anything else is
a 404 before any query), the OpenAPI document, and the CLI reading ``250 ... queued as ob_...``.
"""
import re
import secrets

PREFIX = "ob_"
# Up to 37 digits after the prefix (the column holds 40 characters); new ids have 24.
PATTERN = r"ob_[0-9a-f]{1,37}"
PUBLIC_ID = re.compile(PATTERN)


def new_public_id():
    return PREFIX + secrets.token_hex(12)


def is_public_id(text):
    """True when ``text`` is shaped like a public id (whether or not such a row exists)."""
    return PUBLIC_ID.fullmatch(text) is not None


# Events (``evt_``) and webhook endpoints (``wh_``): the same shape, their own prefixes.
EVENT_PREFIX = "evt_"
EVENT_PATTERN = r"evt_[0-9a-f]{24}"
WEBHOOK_PREFIX = "wh_"
WEBHOOK_PATTERN = r"wh_[0-9a-f]{24}"


def new_event_id():
    return EVENT_PREFIX + secrets.token_hex(12)


def new_webhook_id():
    return WEBHOOK_PREFIX + secrets.token_hex(12)


def is_event_id(text):
    return re.fullmatch(EVENT_PATTERN, text or "") is not None


def is_webhook_id(text):
    return re.fullmatch(WEBHOOK_PATTERN, text or "") is not None
