"""Turn a stored .eml into what the Sent page shows: headers, the text part, the HTML part
(served separately, sandboxed) and the attachment list. Nothing here renders HTML."""
from email import policy
from email.parser import BytesParser

SHOWN_HEADERS = ("From", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date", "Message-ID")
MAX_TEXT_CHARS = 500_000  # characters of the text part shown on the page; the .eml has the rest


def parse(fileobj):
    return BytesParser(policy=policy.default).parse(fileobj)


def _header(message, name):
    try:
        values = message.get_all(name) or []
        return ", ".join(str(v) for v in values)
    except Exception:  # a malformed header is shown raw rather than losing the page
        return ", ".join(str(v) for k, v in message.raw_items() if k.lower() == name.lower())


def _content(part):
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):  # unknown charset or broken transfer encoding
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("utf-8", "replace")
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    return content


def headers(message):
    return [(name, _header(message, name)) for name in SHOWN_HEADERS if message.get(name) is not None]


def text_body(message):
    part = message.get_body(preferencelist=("plain",))
    if part is None:
        return None
    text = _content(part)
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "\n[… truncated; download the .eml for the rest]"


def html_body(message):
    part = message.get_body(preferencelist=("html",))
    return None if part is None else _content(part)


def attachments(message):
    found = []
    for part in message.iter_attachments() if message.is_multipart() else []:
        payload = part.get_payload(decode=True) or b""
        found.append({"filename": part.get_filename() or "(unnamed)", "type": part.get_content_type(),
                      "size": len(payload)})
    return found
