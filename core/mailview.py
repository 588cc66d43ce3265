"""Turn a stored .eml into what the Sent page and the API show: headers, the text part, the HTML
part (served separately, sandboxed) and the attachment list. Nothing here renders HTML.

The work is bounded whatever the stored message holds (a message accepted before today's header
limits, or inbound mail later): CPython's header registry is superlinear in a field's size (a
998-character To: or Content-Type already costs 10-25 ms), so it never runs here. Header values
are kept as written (``READ_POLICY``), cut to ``MAX_PARSED_HEADER`` characters before the MIME
code reads a parameter from them, and decoded for display by core.headers.display_text
from at most ``MAX_HEADER_CHARS`` characters.
"""
from email.message import _splitparam
from email.parser import BytesParser
from email.policy import EmailPolicy

from core.headers import display_text
from core.headers import unfold

SHOWN_HEADERS = ("From", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date", "Message-ID")
MAX_BODY_CHARS = 1_000_000  # characters of a text or HTML part shown inline (Sent page, API); the .eml has the rest
TRUNCATED_NOTE = "\n[… truncated; download the .eml for the rest]"  # ends a cut text part on the Sent page
MAX_HEADER_CHARS = 10_000  # characters of one header value shown; the .eml has the rest
MAX_HEADERS = 1000  # header fields listed by all_headers(); the .eml has the rest
MAX_PARSED_HEADER = 998  # characters of a header the MIME code may read parameters from (RFC 5322 line)


class RawHeader(str):
    """A header value as written (folding removed), standing in for the registry's objects:
    the name, no defects, and the one attribute EmailMessage.is_attachment() reads."""

    def __new__(cls, name, value):
        self = super().__new__(cls, value)
        self.name, self.defects = name, ()
        return self

    @property
    def content_disposition(self):
        return _splitparam(self)[0].lower() or None


class ReadPolicy(EmailPolicy):
    """policy.default for reading, with RawHeader instead of the header registry."""

    def header_fetch_parse(self, name, value):
        if hasattr(value, "name"):
            return value
        return RawHeader(name, "".join(value[:MAX_PARSED_HEADER * 2].splitlines())[:MAX_PARSED_HEADER])


READ_POLICY = ReadPolicy()


def parse(fileobj):
    return BytesParser(policy=READ_POLICY).parse(fileobj)


def header_text(raw_value):
    """A raw header value (as BytesParser keeps it: folded, 8-bit octets as surrogates) for
    display: UTF-8, unfolded, encoded-words decoded, at most MAX_HEADER_CHARS characters."""
    if not isinstance(raw_value, str):  # an email.header.Header from a set header; not in parsed mail
        raw_value = str(raw_value)
    value = raw_value[:MAX_HEADER_CHARS * 3].encode("ascii", "surrogateescape")
    return display_text(unfold(value), MAX_HEADER_CHARS)


def all_headers(message):
    """[(name, text)] of the first MAX_HEADERS fields, in order."""
    found = []
    for name, value in message.raw_items():
        if len(found) == MAX_HEADERS:
            break
        found.append((name, header_text(value)))
    return found


def headers(message):
    """[(name, text)] of SHOWN_HEADERS present, several fields of one name joined by ", "."""
    shown = {name.lower(): [] for name in SHOWN_HEADERS}
    for name, value in message.raw_items():
        values = shown.get(name.lower())
        if values is not None and sum(map(len, values)) < MAX_HEADER_CHARS:
            values.append(header_text(value))
    return [(name, ", ".join(shown[name.lower()])[:MAX_HEADER_CHARS]) for name in SHOWN_HEADERS
            if shown[name.lower()]]


def _content(part):
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):  # unknown charset or broken transfer encoding
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("utf-8", "replace")
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    return content


def body(message, kind):
    """(content, truncated) of the ``kind`` ("plain" or "html") body part, at most MAX_BODY_CHARS
    characters; (None, False) when there is none. A part in an unknown charset or a broken
    transfer encoding is decoded as UTF-8 with replacement characters, never refused."""
    part = message.get_body(preferencelist=(kind,))
    if part is None:
        return None, False
    content = _content(part)
    return content[:MAX_BODY_CHARS], len(content) > MAX_BODY_CHARS


def text_body(message):
    """The text part for the Sent page: cut at MAX_BODY_CHARS, saying so."""
    text, truncated = body(message, "plain")
    return text + TRUNCATED_NOTE if truncated else text


def html_body(message):
    """The whole HTML part, for the sandboxed page that shows it (not capped: it is the part itself)."""
    part = message.get_body(preferencelist=("html",))
    return None if part is None else _content(part)


def attachment_parts(message):
    """[(part, file name or None, content type, decoded size)] of the attachments."""
    found = []
    for part in message.iter_attachments() if message.is_multipart() else []:
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        found.append((part, display_text(filename, 255) if filename else None, part.get_content_type(),
                      len(payload)))
    return found


def attachments(message):
    return [{"filename": filename or "(unnamed)", "type": content_type, "size": size}
            for _, filename, content_type, size in attachment_parts(message)]


def content(message):
    """What the REST API returns of a stored message: every header (``all_headers``), the text
    and html bodies (``body``, cut at MAX_BODY_CHARS) and the attachment list."""
    return {"headers": [{"name": name, "value": value} for name, value in all_headers(message)],
            "text": body(message, "plain")[0], "html": body(message, "html")[0],
            "attachments": [{"filename": filename, "content_type": content_type, "size": size}
                            for _, filename, content_type, size in attachment_parts(message)]}
