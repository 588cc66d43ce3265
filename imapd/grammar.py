"""IMAP command arguments (RFC 3501 section 9), parsed from one command's text.

The session reads a command line by line, replacing each literal ``{n}`` with a placeholder
(NUL, its index, NUL: NUL may not appear in a command line, so no client text can forge one) and
collecting the literal bytes aside. ``tokenize`` then turns the text into atoms, strings and
nested lists. Everything is bounded: MAX_DEPTH levels of parentheses, MAX_TOKENS tokens.
"""
import re

MAX_DEPTH = 8  # parenthesis levels in one command (FETCH and SEARCH need three)
MAX_TOKENS = 2000  # tokens in one command
MAX_SEQUENCE_RANGES = 1000  # comma-separated parts of a sequence set

PLACEHOLDER = re.compile(rb"\x00(\d+)\x00")
ATOM_SPECIALS = set('(){ %*"\\]') | {chr(c) for c in range(32)} | {"\x7f"}


class ParseError(ValueError):
    """The arguments do not parse; str() is the human text after ``BAD``."""


class Atom(str):
    """An unquoted token (NIL, a flag, a FETCH item like ``BODY.PEEK[HEADER]<0.100>``)."""


class Literal:
    """A literal's bytes (``data``), or its spool file for a large APPEND (``file``, ``size``)."""

    def __init__(self, data=None, file=None, size=0):
        self.data, self.file, self.size = data, file, size if data is None else len(data)

    def text(self):
        if self.data is None:
            raise ParseError("literal too large for this argument")
        return self.data.decode("utf-8", "surrogateescape")


def tokenize(text, literals):
    """The tokens of ``text`` (str): Atom, str (quoted string or literal text), Literal (kept
    as is for APPEND), or list for a parenthesised list."""
    stack, current, pos, count = [], [], 0, 0
    length = len(text)
    while pos < length:
        char = text[pos]
        count += 1
        if count > MAX_TOKENS:
            raise ParseError("Too many arguments")
        if char == " ":
            pos += 1
            count -= 1
        elif char == "(":
            if len(stack) >= MAX_DEPTH:
                raise ParseError("Lists nested too deeply")
            stack.append(current)
            current = []
            pos += 1
        elif char == ")":
            if not stack:
                raise ParseError("Unbalanced parenthesis")
            inner, current = current, stack.pop()
            current.append(inner)
            pos += 1
        elif char == '"':
            pos, value = _quoted(text, pos + 1)
            current.append(value)
        elif char == "\x00":
            end = text.index("\x00", pos + 1)
            current.append(literals[int(text[pos + 1:end])])
            pos = end + 1
        else:
            pos, value = _atom(text, pos)
            current.append(Atom(value))
    if stack:
        raise ParseError("Unbalanced parenthesis")
    return current


def _quoted(text, pos):
    out = []
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text) and text[pos + 1] in '"\\':
            out.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return pos + 1, "".join(out)
        elif char in "\r\n":
            break
        else:
            out.append(char)
            pos += 1
    raise ParseError("Unterminated quoted string")


def _atom(text, pos):
    """An atom; a ``[...]`` inside it (FETCH section, may hold spaces and a list) is part of it,
    and so is a ``<...>`` partial right after."""
    start = pos
    while pos < len(text):
        char = text[pos]
        if char == "[":
            close = text.find("]", pos)
            if close < 0:
                raise ParseError("Unbalanced bracket")
            pos = close + 1
            continue
        if char in ' ()"\x00':
            break
        pos += 1
    if pos == start:
        raise ParseError(f"Unexpected character {text[pos]!r}")
    return pos, text[start:pos]


def text_of(token):
    """A token used as a string (astring): an Atom, a quoted string or a small literal."""
    if isinstance(token, Literal):
        return token.text()
    if isinstance(token, str):
        return str(token)
    raise ParseError("Expected a string, got a list")


SEQUENCE = re.compile(r"(\d+|\*)(?::(\d+|\*))?")


def sequence_set(value, largest):
    """Ranges [(low, high)] of sequence set ``value`` (``*`` = ``largest``), each low <= high.
    Never expands a range, so ``1:4294967295`` costs nothing."""
    if not isinstance(value, str) or not value:
        raise ParseError("Expected a sequence set")
    parts = value.split(",")
    if len(parts) > MAX_SEQUENCE_RANGES:
        raise ParseError(f"Sequence set has more than {MAX_SEQUENCE_RANGES} parts")
    ranges = []
    for part in parts:
        match = SEQUENCE.fullmatch(part)
        if not match:
            raise ParseError(f"Invalid sequence set {value[:50]!r}")
        low = _number(match.group(1), largest)
        high = _number(match.group(2), largest) if match.group(2) else low
        if low == 0 or high == 0:
            raise ParseError("Sequence numbers start at 1")
        ranges.append((min(low, high), max(low, high)))
    return ranges


def _number(text, largest):
    if text == "*":
        return largest or 0xFFFFFFFF  # an empty mailbox: "1:*" matches nothing
    number = int(text[:12])
    if number > 0xFFFFFFFF:
        raise ParseError("Number out of range")
    return number


def in_ranges(number, ranges):
    return any(low <= number <= high for low, high in ranges)
