"""FETCH: which data items a client asked for (RFC 3501 6.4.5) and how each is written (7.4.2).

A response is a list of pieces: ``bytes`` to send as they are, or a ``Range`` of the stored file
to stream in chunks, so BODY[] of a 25 MB message never sits in memory.
"""
import email.utils
import re
from dataclasses import dataclass
from dataclasses import field

from core import mimetree
from imapd.grammar import Atom
from imapd.grammar import ParseError

MACROS = {"ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
          "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
          "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]}
SIMPLE = {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "UID", "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822",
          "RFC822.HEADER", "RFC822.TEXT"}
SECTION_ITEM = re.compile(r"(BODY(?:\.PEEK)?|BINARY(?:\.PEEK)?)\[([^\]]*)\](?:<(\d{1,10})(?:\.(\d{1,10}))?>)?",
                          re.IGNORECASE)
TEXT_SPECS = {"", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"}
MAX_ITEMS = 50  # data items in one FETCH
MAX_FIELD_NAMES = 100  # names in HEADER.FIELDS (...)
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
ENVELOPE_FIELDS = ("date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to", "message-id")


@dataclass
class Range:
    start: int
    length: int


@dataclass
class Item:
    name: str  # FLAGS, UID, ..., or SECTION for BODY[...]
    peek: bool = True
    numbers: tuple = ()
    spec: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: list = field(default_factory=list)
    partial: tuple = None  # (origin, count)
    label: str = ""  # how the response names it, e.g. BODY[HEADER.FIELDS (FROM)]<0>


def parse_items(args):
    """The Items of a FETCH's item argument (one atom, a macro, or a list)."""
    if not args:
        raise ParseError("FETCH needs data items")
    value = args[0]
    names = value if isinstance(value, list) else [value]
    if isinstance(value, str) and value.upper() in MACROS:
        names = [Atom(n) for n in MACROS[value.upper()]]
    if len(names) > MAX_ITEMS:
        raise ParseError(f"At most {MAX_ITEMS} FETCH data items")
    return [_item(name) for name in names]


def _item(token):
    if not isinstance(token, Atom):
        raise ParseError("Invalid FETCH data item")
    upper = token.upper()
    if upper in SIMPLE:
        if upper == "RFC822":
            return Item("SECTION", peek=False, label="RFC822")
        if upper == "RFC822.HEADER":
            return Item("SECTION", spec="HEADER", label="RFC822.HEADER")
        if upper == "RFC822.TEXT":
            return Item("SECTION", peek=False, spec="TEXT", label="RFC822.TEXT")
        return Item(upper)
    match = SECTION_ITEM.fullmatch(token)
    if not match:
        raise ParseError(f"Unknown FETCH data item {token[:40]!r}")
    kind, section, origin, count = match.groups()
    if kind.upper().startswith("BINARY"):
        raise ParseError("BINARY is not supported; use BODY[]")
    item = Item("SECTION", peek=kind.upper().endswith(".PEEK"))
    spec, _, names = section.partition("(")
    spec = spec.strip().upper()
    pieces = spec.split(".") if spec else []
    numbers = []
    for piece in pieces:
        if not (piece.isascii() and piece.isdigit()):
            break
        numbers.append(int(piece[:9]))
    text_spec = ".".join(pieces[len(numbers):])
    if text_spec not in TEXT_SPECS or any(n == 0 for n in numbers) or len(numbers) > mimetree.MAX_DEPTH:
        raise ParseError(f"Invalid section {section[:60]!r}")
    if text_spec == "MIME" and not numbers:
        raise ParseError("MIME needs a part number")
    if text_spec.startswith("HEADER.FIELDS"):
        if not names.endswith(")"):
            raise ParseError("HEADER.FIELDS needs a list of field names")
        item.fields = [n.strip('"').lower() for n in names[:-1].split()]
        if not item.fields or len(item.fields) > MAX_FIELD_NAMES:
            raise ParseError(f"HEADER.FIELDS needs 1 to {MAX_FIELD_NAMES} field names")
    elif names:
        raise ParseError(f"Invalid section {section[:60]!r}")
    item.numbers, item.spec = tuple(numbers), text_spec
    label_section = spec + (" (" + " ".join(f.upper() for f in item.fields) + ")" if item.fields else "")
    item.label = f"BODY[{label_section}]"
    if origin is not None:
        item.partial = (int(origin), int(count) if count is not None else None)
        item.label += f"<{int(origin)}>"
    return item


def headers_suffice(items):
    """True when the items need the top-level header and body bounds only (ENVELOPE, HEADER and TEXT
    sections): no MIME scan of the whole message."""
    return all(i.name not in ("BODYSTRUCTURE", "BODY") and not i.numbers for i in items)


def needs_structure(items):
    return any(i.name in ("BODYSTRUCTURE", "BODY", "ENVELOPE") or (i.name == "SECTION" and (i.numbers or i.spec))
               for i in items)


# -- rendering ---------------------------------------------------------------------------------

def nstring(value):
    """NIL, a quoted string, or a literal when the value needs one (8-bit, CR/LF, long)."""
    if value is None:
        return b"NIL"
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(data) < 1000 and all(32 <= b < 127 for b in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def internal_date(value):
    return f'"{value.day:02d}-{MONTHS[value.month - 1]}-{value.year:04d} {value:%H:%M:%S} +0000"'.encode()


def flags(meta):
    names = [n for n, on in (("\\Seen", meta.seen), ("\\Flagged", meta.flagged)) if on]
    return ("(" + " ".join(names) + ")").encode()


def _unfolded(headers, name):
    value = headers.get(name)
    if value is None:
        return None
    return " ".join(str(value).split())


def _addresses(headers, name):
    values = headers.get_all(name) or []
    if not values:
        return b"NIL"
    found = []
    for display, address in email.utils.getaddresses([" ".join(str(v).split()) for v in values]):
        if not address and not display:
            continue
        mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
        found.append(b"(" + b" ".join([nstring(display or None), b"NIL", nstring(mailbox or None),
                                        nstring(host or None)]) + b")")
        if len(found) >= 100:
            break
    return b"(" + b"".join(found) + b")" if found else b"NIL"


def envelope(headers):
    parts = [nstring(_unfolded(headers, "date")), nstring(_unfolded(headers, "subject"))]
    sender_like = _addresses(headers, "from")
    parts.append(sender_like)
    for name in ("sender", "reply-to"):
        own = _addresses(headers, name)
        parts.append(own if own != b"NIL" else sender_like)
    for name in ("to", "cc", "bcc"):
        parts.append(_addresses(headers, name))
    parts += [nstring(_unfolded(headers, "in-reply-to")), nstring(_unfolded(headers, "message-id"))]
    return b"(" + b" ".join(parts) + b")"


def _params(headers, header="content-type"):
    params = headers.get_params(header=header) or []
    pairs = [(k, v) for k, v in params[1:] if k]
    if header == "content-type" and not pairs and headers.get("content-type") is None \
            and headers.get_content_type() == "text/plain":
        pairs = [("charset", "us-ascii")]
    if not pairs:
        return b"NIL"
    out = []
    for key, value in pairs[:50]:
        if isinstance(value, tuple):  # RFC 2231 (charset, language, value)
            value = email.utils.collapse_rfc2231_value(value)
        out += [nstring(key.upper()), nstring(str(value))]
    return b"(" + b" ".join(out) + b")"


def _disposition(headers):
    value = headers.get("content-disposition")
    if value is None:
        return b"NIL"
    kind = str(value).split(";", 1)[0].strip() or "attachment"
    return b"(" + nstring(kind.upper()) + b" " + _params(headers, "content-disposition") + b")"


def body_structure(part, extended=True):
    headers = part.headers
    if part.is_multipart:
        inner = b"".join(body_structure(child, extended) for child in part.children)
        out = inner + b" " + nstring(part.content_type.split("/", 1)[1].upper())
        if extended:
            out += b" " + _params(headers) + b" " + _disposition(headers) + b" NIL NIL"
        return b"(" + out + b")"
    maintype, _, subtype = part.content_type.partition("/")
    encoding = (_unfolded(headers, "content-transfer-encoding") or "7BIT").upper()
    out = b" ".join([nstring(maintype.upper()), nstring(subtype.upper()), _params(headers),
                     nstring(_unfolded(headers, "content-id")), nstring(_unfolded(headers, "content-description")),
                     nstring(encoding), str(part.body_size).encode()])
    if part.message is not None:
        out += b" " + envelope(part.message.headers) + b" " + body_structure(part.message, extended)
        out += b" " + str(part.lines).encode()
    elif maintype == "text":
        out += b" " + str(part.lines).encode()
    if extended:
        out += b" NIL " + _disposition(headers) + b" NIL NIL"
    return b"(" + out + b")"


def header_lines(f, part):
    """[(lower-case name, raw bytes of the field with its continuation lines)] of ``part``'s header."""
    f.seek(part.start)
    block = f.read(min(part.body_start - part.start, mimetree.MAX_HEADER_BYTES + 2))
    fields = []
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
        else:
            fields.append((line.split(b":", 1)[0].strip().lower().decode("ascii", "replace"), [line]))
    return [(name, b"".join(lines)) for name, lines in fields]


def section(f, size, root, item):
    """The pieces (bytes or Range) of a BODY[...] item's content, before the partial is applied:
    returns ("bytes", data) or ("range", start, end). None when the part does not exist."""
    if not item.numbers and not item.spec:
        return ("range", 0, size)
    target = root if not item.numbers else mimetree.find(root, item.numbers)
    if target is None:
        return None
    if item.spec == "MIME":
        return ("range", target.start, target.body_start)
    if item.spec == "":
        return ("range", target.body_start, target.end)
    message = target if not item.numbers else target.message
    if message is None:
        return None
    if item.spec == "TEXT":
        return ("range", message.body_start, message.end)
    if item.spec == "HEADER":
        return ("range", message.start, message.body_start)
    wanted = set(item.fields)
    keep = item.spec == "HEADER.FIELDS"
    data = b"".join(raw for name, raw in header_lines(f, message) if (name in wanted) == keep)
    return ("bytes", data + b"\r\n")
