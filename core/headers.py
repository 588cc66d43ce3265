"""The header section of a message, read in time linear in its size, with bounded work.

CPython's header registry (``email.policy.default``/``SMTP``) is superlinear in the number of
addresses in a field: a 179 KiB ``To:`` held the SMTP event loop for 5.7 s. So nothing here runs
it over client input. ``read_section`` cuts the header section out of the spool with one bounded
read, checks its lines and finds its fields with regular expressions (C speed, one Python step
per field), and ``mailboxes`` parses only the address fields the submit path checks with a small
tokenizer whose work is capped (``Budget``), stopping at the first address over a limit.

Guarantees: at most ``MAX_HEADER_BYTES`` read, at most ``MAX_FIELDS`` fields, at most
``MAX_ADDRESS_TOKENS`` tokenizer steps per message; a section that does not fit is refused with a
``HeaderError`` naming the reason, never parsed partly.
"""
import re
from email.header import decode_header
from email.header import make_header

MAX_HEADER_BYTES = 256 * 1024  # octets of the header section, through its last line (real mail: a few KiB)
MAX_FIELDS = 1000  # header fields in one message (a long Received chain is ~50)
MAX_ADDRESS_TOKENS = 5000  # tokenizer steps over all parsed address fields of one message

# A field: its name (RFC 5322 ftext, any printable ASCII but ':'), optional blanks (obsolete
# syntax "From :"), the colon. Anything else at the start of a line that is not a continuation
# (leading SP/HTAB) is a malformed line: parsers disagree on where such a header section ends, so
# a field after it could be seen by SES or a reader and not by us.
FIELD_START = re.compile(rb"^([\x21-\x39\x3b-\x7e]++)[ \t]*+:", re.M)
BAD_LINE = re.compile(rb"^(?=[^\n])(?![ \t]|[\x21-\x39\x3b-\x7e]++[ \t]*+:)", re.M)
BARE_CR = re.compile(rb"\r(?!\n)")
BLANK_LINE = re.compile(rb"\n\r?\n")
FOLD = re.compile(r"\r?\n(?=[ \t])")

# Address-list tokens (RFC 5322 3.4). A token swallows the comments and folding white space
# around it, and a run of words (atoms, which may hold dots and non-ASCII, and quoted strings)
# is one token, so a whole display name costs one step. Comments may nest one level.
_CFWS = r"(?:[ \t\r\n]++|\((?:[^()\\]|\\.|\((?:[^()\\]|\\.)*+\))*+\))*+"
_WORD = r'(?:"(?:[^"\\]|\\.)*+"|[^ \t\r\n"()<>@,;:\\\[\]]++)'
ADDRESS_TOKEN = re.compile(
    rf"{_CFWS}(?:(?P<words>{_WORD}(?:{_CFWS}{_WORD})*+)|(?P<literal>\[(?:[^\[\]\\]|\\.)*+\])|(?P<special>[<>@,;:]))?+"
    rf"{_CFWS}", re.S)
ONE_WORD = re.compile(_WORD, re.S)
ATOM = re.compile(r'[^ \t\r\n"()<>@,;:\\\[\]]++')


class HeaderError(ValueError):
    """The header section is refused. ``status`` is the SMTP code and enhanced code to refuse it
    with; str(exc) the reason a person can act on."""

    def __init__(self, reason, status="554 5.6.0"):
        super().__init__(reason)
        self.status = status


class AddressSyntax(ValueError):
    """An address field that is not an RFC 5322 address list."""


class TooManyAddresses(ValueError):
    """More addresses than the caller's limit (parsing stopped there)."""


class Budget:
    """Tokenizer steps left for this message; ``HeaderError`` once spent."""

    def __init__(self, steps=MAX_ADDRESS_TOKENS):
        self.left = steps

    def spend(self):
        self.left -= 1
        if self.left < 0:
            raise HeaderError(f"Address headers too complex (more than {MAX_ADDRESS_TOKENS} tokens)")


class Section:
    """A header section: ``raw`` (bytes, each line with its line end, no blank line), where the
    rest of the message starts (``body_offset``, at the blank line) and the fields, as
    [(lower-case name, start, end)] offsets into ``raw``."""

    def __init__(self, raw, body_offset, fields):
        self.raw, self.body_offset, self.fields = raw, body_offset, fields
        self._by_name = {}
        for name, start, end in fields:
            self._by_name.setdefault(name, []).append((start, end))

    def values(self, name):
        """The raw values (bytes, folding kept) of every field called ``name`` (lower-case)."""
        return [self.raw[start:end].split(b":", 1)[1] for start, end in self._by_name.get(name, ())]

    def text(self, name):
        """The first ``name`` field's value as one unfolded line (str), or None."""
        values = self.values(name)
        return None if not values else unfold(values[0])

    def without(self, names):
        """``raw`` minus every field whose name is in ``names`` (continuation lines included)."""
        if not any(field in names for field, _, _ in self.fields):
            return self.raw
        return b"".join(self.raw[start:end] for field, start, end in self.fields if field not in names)


def read_section(spool):
    """Read the header section at the start of ``spool`` (one read of at most MAX_HEADER_BYTES
    + 3 octets) and check its shape; leaves ``spool`` anywhere. Raises HeaderError."""
    spool.seek(0)
    data = spool.read(MAX_HEADER_BYTES + 3)
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        return Section(b"", 0, [])
    blank = BLANK_LINE.search(data)
    end = blank.start() + 1 if blank is not None else len(data)  # no blank line: all header, or too large
    if end > MAX_HEADER_BYTES:
        raise HeaderError(f"Message header section exceeds fixed limit ({MAX_HEADER_BYTES // 1024} KiB)",
                          "552 5.3.4")
    raw = data[:end]
    if BARE_CR.search(raw):
        raise HeaderError("Bare CR in the header section (CR must be followed by LF)")
    if raw[:1] in (b" ", b"\t"):
        raise HeaderError("Malformed header section: it starts with a continuation line")
    bad = BAD_LINE.search(raw)
    if bad is not None:
        number = raw.count(b"\n", 0, bad.start()) + 1
        raise HeaderError(f"Malformed header line {number}: neither a field (name and colon) nor a continuation")
    starts = []
    for match in FIELD_START.finditer(raw):
        if len(starts) == MAX_FIELDS:
            raise HeaderError(f"Too many header fields (at most {MAX_FIELDS})", "552 5.3.4")
        starts.append((match.group(1).lower().decode("ascii"), match.start()))
    ends = [start for _, start in starts[1:]] + [len(raw)]
    fields = [(name, start, end) for (name, start), end in zip(starts, ends)]
    return Section(raw, end, fields)


def unfold(value):
    """A raw header value (bytes) as text: UTF-8 (RFC 6532; invalid octets replaced), unfolded,
    the leading blank and the line end removed."""
    return FOLD.sub("", value.decode("utf-8", "replace")).strip(" \t\r\n")


def display_text(value, limit):
    """``value`` (unfolded str) with RFC 2047 encoded-words decoded, at most ``limit``
    characters; decoding only reads the first ``2 * limit`` characters."""
    text = value[:2 * limit]
    if "=?" in text:
        try:
            text = str(make_header(decode_header(text)))
        except Exception:  # an unknown charset or broken encoded-word: show it as written
            pass
    return text[:limit]


def mailboxes(value, budget, limit=None, groups=True):
    """The addr-specs (local@domain, as written) of the address list ``value`` (str).

    Strict where readers disagree: a word before ``@`` outside angle brackets, text after
    ``>``, an addr-spec without a domain, nested groups all raise AddressSyntax. Groups
    (``team: a@x, b@y;``) are flattened, or refused with ``groups=False``. Stops with
    TooManyAddresses as soon as there are more than ``limit``. Each token costs ``budget``.
    """
    found = []
    tokens = _Tokens(value, budget)
    while tokens.kind is not None:
        if tokens.kind == ",":  # an empty list element (RFC 5322 obs-addr-list)
            tokens.take()
            continue
        words = tokens.take_words()
        if tokens.kind == ":" and words is not None:
            if not groups:
                raise AddressSyntax("a group is not allowed here")
            tokens.take()
            while tokens.kind not in (";", None):
                if tokens.kind == ",":
                    tokens.take()
                    continue
                _mailbox(tokens, tokens.take_words(), found)
                _check_limit(found, limit)
                if tokens.kind not in (",", ";"):
                    raise AddressSyntax("expected ',' or ';' in a group")
            tokens.expect(";")
        else:
            _mailbox(tokens, words, found)
            _check_limit(found, limit)
        if tokens.kind is not None:
            tokens.expect(",")
    return found


def _check_limit(found, limit):
    if limit is not None and len(found) > limit:
        raise TooManyAddresses()


def _mailbox(tokens, words, found):
    """One mailbox: ``[display name] <local@domain>`` or ``local@domain``; ``words`` is the
    run of words already taken (None when there was none)."""
    if tokens.kind == "<":
        tokens.take()
        if tokens.kind == "@":  # obsolete source route: <@a.example,@b.example:local@domain>
            while tokens.kind in ("@", ","):
                if tokens.take() == "@":
                    tokens.take_domain()
            tokens.expect(":")
        local = tokens.take_local()
        tokens.expect("@")
        found.append(f"{local}@{tokens.take_domain()}")
        tokens.expect(">")
        return
    if words is None or not ONE_WORD.fullmatch(words):
        raise AddressSyntax("expected an address (local@domain)")
    tokens.expect("@")
    found.append(f"{words}@{tokens.take_domain()}")


class _Tokens:
    """ADDRESS_TOKEN matches over ``text`` with one token of lookahead: ``kind`` is a special
    character, "words", "literal" or None at the end; ``value`` its text."""

    def __init__(self, text, budget):
        self.text, self.budget, self.pos = text, budget, 0
        self.kind = self.value = None
        self._advance()

    def _advance(self):
        self.kind = self.value = None
        while self.pos < len(self.text):
            self.budget.spend()
            match = ADDRESS_TOKEN.match(self.text, self.pos)
            if match.end() == self.pos:
                raise AddressSyntax(f"unexpected {ascii(self.text[self.pos])}")
            self.pos = match.end()
            kind = match.lastgroup
            if kind is not None:
                self.kind = match.group(kind) if kind == "special" else kind
                self.value = match.group(kind)
                return

    def take(self):
        kind = self.kind
        if kind is None:
            raise AddressSyntax("unexpected end")
        self._advance()
        return kind

    def expect(self, special):
        if self.kind != special:
            found = "the end" if self.kind is None else ascii(self.value[:20])
            raise AddressSyntax(f"expected {special!r}, found {found}")
        self._advance()

    def take_words(self):
        if self.kind != "words":
            return None
        value = self.value
        self._advance()
        return value

    def take_local(self):
        words = self.take_words()
        if words is None or not ONE_WORD.fullmatch(words):
            raise AddressSyntax("expected an address (local@domain)")
        return words

    def take_domain(self):
        if self.kind == "literal" or (self.kind == "words" and ATOM.fullmatch(self.value)):
            value = self.value
            self._advance()
            return value
        raise AddressSyntax("expected a domain after '@'")
