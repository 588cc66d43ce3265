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
