"""The MIME structure of a stored message as byte ranges, found by reading it line by line.

IMAP serves parts of a message (BODY[1.2], BODY[HEADER], BODYSTRUCTURE) from the blob store; a
parser that builds the whole message in memory (email.parser) would hold a 25 MB message per
client. ``scan`` reads the file once per nesting level and keeps only offsets and each part's
header block (at most MAX_HEADER_BYTES), so memory stays small whatever the message holds.
Bounded: at most MAX_PARTS parts and MAX_DEPTH levels; deeper or further parts are left as
opaque bodies of their parent.
"""
from email.parser import BytesHeaderParser

from core.mailview import READ_POLICY

MAX_PARTS = 500  # parts per message described; the rest stay inside their parent's body
MAX_DEPTH = 20  # nesting levels of multipart / message/rfc822
MAX_HEADER_BYTES = 256 * 1024  # of one part's header block; beyond it the rest counts as body
READ_CHUNK = 64 * 1024  # bytes per readline() while scanning


class Part:
    """One MIME entity: ``[start, body_start)`` is its header block (blank line included),
    ``[body_start, end)`` its body. ``children`` for a multipart, ``message`` for message/rfc822."""

    def __init__(self, start, body_start, end, headers):
        self.start, self.body_start, self.end, self.headers = start, body_start, end, headers
        self.children = []
        self.message = None
        self.lines = 0  # body lines (text/* and message/rfc822 report them)

    @property
    def content_type(self):
        return self.headers.get_content_type()

    @property
    def is_multipart(self):
        return self.content_type.startswith("multipart/") and bool(self.children)

    @property
    def body_size(self):
        return self.end - self.body_start


def _lines(f, start, end):
    """(offset, chunk, at_line_start) over ``[start, end)``; long lines come in READ_CHUNK pieces."""
    pos, at_start = start, True
    while pos < end:
        f.seek(pos)  # the caller may have read elsewhere in between
        chunk = f.readline(min(READ_CHUNK, end - pos))
        if not chunk:
            return
        yield pos, chunk, at_start
        pos += len(chunk)
        at_start = chunk.endswith(b"\n")


def _header_block(f, start, end):
    size, header = 0, []
    for pos, chunk, at_start in _lines(f, start, end):
        if at_start and chunk in (b"\r\n", b"\n"):
            header.append(chunk)
            return b"".join(header), pos + len(chunk)
        size += len(chunk)
        if size > MAX_HEADER_BYTES:
            break
        header.append(chunk)
    text = b"".join(header)
    return text, start + len(text)


def _count_lines(f, start, end):
    f.seek(start)
    count, left = 0, end - start
    while left > 0:
        chunk = f.read(min(READ_CHUNK, left))
        if not chunk:
            break
        count += chunk.count(b"\n")
        left -= len(chunk)
    if end > start:  # a last line without CRLF still counts
        f.seek(end - 1)
        if f.read(1) != b"\n":
            count += 1
    return count


def scan(f, size):
    """The Part tree of the message in binary file ``f`` of ``size`` bytes."""
    return _part(f, 0, size, "text/plain", 0, [MAX_PARTS])


def scan_headers(f, size):
    """The top-level Part with its header only (ENVELOPE, BODY[HEADER...]): no MIME scan."""
    header, body_start = _header_block(f, 0, size)
    headers = BytesHeaderParser(policy=READ_POLICY).parsebytes(header)
    return Part(0, body_start, size, headers)


def _part(f, start, end, default_type, depth, budget):
    budget[0] -= 1
    header, body_start = _header_block(f, start, end)
    headers = BytesHeaderParser(policy=READ_POLICY).parsebytes(header)
    headers.set_default_type(default_type)
    part = Part(start, body_start, end, headers)
    ctype = part.content_type
    if depth < MAX_DEPTH and budget[0] > 0:
        if ctype.startswith("multipart/"):
            boundary = headers.get_boundary()
            if boundary:
                child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
                for child_start, child_end in _split(f, body_start, end, boundary.encode("ascii", "surrogateescape")):
                    if budget[0] <= 0:
                        break
                    part.children.append(_part(f, child_start, child_end, child_type, depth + 1, budget))
        elif ctype == "message/rfc822":
            part.message = _part(f, body_start, end, "text/plain", depth + 1, budget)
    if ctype.startswith("text/") or ctype == "message/rfc822":
        part.lines = _count_lines(f, body_start, end)
    return part


def _split(f, start, end, boundary):
    """[(start, end)] of the body parts between ``--boundary`` lines (RFC 2046 5.1.1): the CRLF
    before a delimiter belongs to the delimiter; text after the close delimiter is ignored."""
    delimiter = b"--" + boundary
    ranges, part_start = [], None
    for pos, chunk, at_start in _lines(f, start, end):
        if not at_start or not chunk.startswith(delimiter):
            continue
        rest = chunk[len(delimiter):]
        closing = rest.startswith(b"--")
        if closing:
            rest = rest[2:]
        if rest.strip(b" \t\r\n"):
            continue  # a line that only starts like the boundary
        if part_start is not None:
            ranges.append((part_start, _before_line_break(f, part_start, pos)))
        if closing:
            return ranges
        part_start = pos + len(chunk)
    if part_start is not None and part_start < end:  # no close delimiter: the last part runs to the end
        ranges.append((part_start, end))
    return ranges


def _before_line_break(f, part_start, delimiter_pos):
    if delimiter_pos - part_start >= 2:
        f.seek(delimiter_pos - 2)
        if f.read(2) == b"\r\n":
            return delimiter_pos - 2
    if delimiter_pos - part_start >= 1:
        f.seek(delimiter_pos - 1)
        if f.read(1) == b"\n":
            return delimiter_pos - 1
    return delimiter_pos


def find(root, numbers):
    """The Part named by section ``numbers`` (RFC 3501 6.4.5), or None. Inside a message/rfc822
    part the numbers go on in its encapsulated message; a non-multipart message's part 1 is its body."""
    part = root
    for number in numbers:
        if part.message is not None:
            part = part.message
        if part.is_multipart:
            if not 1 <= number <= len(part.children):
                return None
            part = part.children[number - 1]
        elif number != 1:
            return None
    return part
