"""SEARCH keys (RFC 3501 6.4.4) compiled into one predicate over core.mailbox.MessageMeta.

Header keys read the columns the submit path stores (From, To with Cc and Bcc, Subject,
Message-ID); dates are the INTERNALDATE (when we stored the message). Body and full-text keys
(BODY, TEXT) are refused with ``NO [CANNOT]``: they would read every stored message.
"""
import datetime

from imapd import grammar
from imapd.grammar import Atom
from imapd.grammar import ParseError

MONTHS = {m: i + 1 for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                          "NOV", "DEC"])}
CONSTANT = {"ALL": True, "ANSWERED": False, "UNANSWERED": True, "DELETED": False, "UNDELETED": True,
            "DRAFT": False, "UNDRAFT": True, "NEW": False, "OLD": True, "RECENT": False}
MAX_KEYS = 200  # search keys in one SEARCH


class Unsupported(ParseError):
    pass


def _date(token):
    text = grammar.text_of(token)
    try:
        day, month, year = text.split("-")
        return datetime.date(int(year), MONTHS[month.upper()], int(day))
    except (ValueError, KeyError):
        raise ParseError(f"Invalid date {text[:20]!r} (expected e.g. 1-Feb-2026)") from None


def _contains(field):
    def make(value):
        needle = value.lower()
        return lambda meta, number: needle in getattr(meta, field).lower()
    return make


HEADER_COLUMNS = {"from": "from_addr", "to": "to_addrs", "cc": "to_addrs", "bcc": "to_addrs",
                  "subject": "subject", "message-id": "message_id"}


def compile_keys(args, session):
    tokens = list(args)
    if not tokens:
        raise ParseError("SEARCH needs at least one key")
    count = [0]
    tests = []
    while tokens:
        tests.append(_key(tokens, session, count))
    return lambda meta, number: all(test(meta, number) for test in tests)


def _key(tokens, session, count):
    count[0] += 1
    if count[0] > MAX_KEYS:
        raise ParseError(f"At most {MAX_KEYS} search keys")
    token = tokens.pop(0)
    if isinstance(token, list):
        inner = []
        while token:
            inner.append(_key(token, session, count))
        return lambda meta, number: all(test(meta, number) for test in inner)
    if not isinstance(token, Atom):
        raise ParseError("Invalid search key")
    key = token.upper()

    def arg():
        if not tokens:
            raise ParseError(f"{key} needs an argument")
        return tokens.pop(0)

    if key in CONSTANT:
        value = CONSTANT[key]
        return lambda meta, number: value
    if key in ("SEEN", "UNSEEN"):
        want = key == "SEEN"
        return lambda meta, number: meta.seen == want
    if key in ("FLAGGED", "UNFLAGGED"):
        want = key == "FLAGGED"
        return lambda meta, number: meta.flagged == want
    if key in ("KEYWORD", "UNKEYWORD"):
        arg()
        return lambda meta, number, want=key == "UNKEYWORD": want
    if key in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        return _contains(HEADER_COLUMNS[key.lower()])(grammar.text_of(arg()))
    if key == "HEADER":
        name, value = grammar.text_of(arg()).lower(), grammar.text_of(arg())
        column = HEADER_COLUMNS.get(name)
        if column is None:
            raise Unsupported(f"HEADER search on {name[:30]} is not supported (From, To, Cc, Bcc, Subject, "
                              "Message-ID are)")
        return _contains(column)(value)
    if key in ("BODY", "TEXT"):
        raise Unsupported(f"{key} search is not supported; search by FROM, TO, SUBJECT, dates or flags")
    if key in ("LARGER", "SMALLER"):
        text = grammar.text_of(arg())
        if not text.isascii() or not text.isdigit():
            raise ParseError(f"{key} needs a number")
        size = int(text[:20])
        if key == "LARGER":
            return lambda meta, number: meta.size > size
        return lambda meta, number: meta.size < size
    if key in ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"):
        day = _date(arg())
        kind = key.replace("SENT", "")
        if kind == "BEFORE":
            return lambda meta, number: meta.internal_date.date() < day
        if kind == "ON":
            return lambda meta, number: meta.internal_date.date() == day
        return lambda meta, number: meta.internal_date.date() >= day
    if key == "NOT":
        inner = _key(tokens, session, count)
        return lambda meta, number: not inner(meta, number)
    if key == "OR":
        left = _key(tokens, session, count)
        right = _key(tokens, session, count)
        return lambda meta, number: left(meta, number) or right(meta, number)
    if key == "UID":
        ranges = grammar.sequence_set(grammar.text_of(arg()), session.uids[-1] if session.uids else 0)
        return lambda meta, number: grammar.in_ranges(meta.uid, ranges)
    if key[:1].isdigit() or key[:1] == "*":
        ranges = grammar.sequence_set(str(token), len(session.uids))
        return lambda meta, number: grammar.in_ranges(number, ranges)
    raise ParseError(f"Unknown search key {key[:20]}")
