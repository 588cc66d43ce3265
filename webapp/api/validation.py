"""Reading JSON request bodies (400/413 answers) and the inbox request; the send request's
field rules live in core/mail.py (pure, shared with the CLI)."""
import hashlib
import json

from flask import current_app
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from core import accounts
from core.mail import Invalid
from core.mail import reject_unknown
from core.mail import text
from webapp.api.errors import ApiError

INBOX_FIELDS = {"name", "domain", "display_name"}


def read_body(limit, note=""):
    """The request body if it is at most ``limit`` bytes, else a 413 (``note`` appended to its
    message). A Content-Length over the limit is refused before reading; a body without one
    (chunked) is read no further than one byte past the limit."""
    raw = None
    if (request.content_length or 0) <= limit:
        request.max_content_length = limit + 1  # werkzeug stops reading there; one byte over = too large
        try:
            raw = request.get_data(cache=False)  # parsed once by the caller; not cached beside it
        except RequestEntityTooLarge:
            pass
    if raw is None or len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"Request body over {limit} bytes{note}")
    return raw


def json_body(limit=None, note=""):
    """The request body as a JSON object, or a 400 that says what is wrong with it (413 past
    ``limit`` bytes, by default the app's MAX_CONTENT_LENGTH)."""
    raw = read_body(limit or current_app.config["MAX_CONTENT_LENGTH"], note)
    if not raw.strip():
        raise ApiError(400, "invalid_json", "The request body must be a JSON object")
    try:
        # Decode first and let go of the bytes, so that at most two copies of a large body (text
        # and parsed) are alive at once; json.loads(bytes) would hold three.
        raw = raw.decode("utf-8-sig")  # RFC 8259 8.1: JSON is UTF-8 (a BOM is ignored)
    except UnicodeDecodeError:
        pass  # json.loads detects UTF-16/32 or says what is wrong
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON: {exc}"[:300]) from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object")
    return body


def canonical_json(body):
    """Stable bytes for hashing a body: key order and whitespace do not matter, content does."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_digest(prefix, body):
    """sha256 hex of ``prefix`` + canonical_json(body), without building that copy of the body."""
    digest = hashlib.sha256(prefix)
    for chunk in _CANONICAL.iterencode(body):
        digest.update(chunk.encode("ascii"))
    return digest.hexdigest()


def inbox_request(body):
    reject_unknown(body, INBOX_FIELDS)
    name = text("name", body.get("name"), 64, single_line=True, required=True)
    domain = text("domain", body.get("domain"), 253, single_line=True)
    display_name = text("display_name", body.get("display_name"))
    try:  # the one display-name rule, shared with the dashboard and the CLI
        display_name = accounts.clean_display_name(display_name)
    except accounts.DisplayNameError as exc:
        raise Invalid("display_name", exc.reason) from None
    return name, domain, display_name
