"""One IMAP connection (RFC 3501, with the RFC 9051 behaviours clients rely on): read a command,
check the cross-cutting rules, dispatch to ``imap_<VERB>``, reply.

The read loop owns the bounds: line length, literal size and count, command deadline (a client
trickling a line), idle timeout, pre-auth deadline, the command and bad-command budgets. Every
failure is a tagged ``BAD``/``NO`` or a ``* BYE`` with human text, never a traceback on the wire.
What a folder holds comes from core.mailbox; this module speaks the protocol only.
"""
import base64
import binascii
import bisect
import logging
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser

import gevent

from core import mailbox
from core import metrics
from core import mimetree
from core.errors import BlobError
from core.errors import OUTAGES
from imapd import fetch
from imapd import grammar
from imapd import search
from imapd.grammar import Atom
from imapd.grammar import Literal
from imapd.grammar import ParseError

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 30  # seconds a client gets to finish a TLS handshake, however it trickles it
READ_SIZE = 16 * 1024  # bytes per recv
SEND_CHUNK = 64 * 1024  # bytes of a stored message per send
MAX_LITERALS = 16  # literals in one command
SPOOL_IN_MEMORY = 64 * 1024  # an APPEND literal above this is spooled to a temporary file
LITERAL = re.compile(rb"\{(\d{1,20})(\+)?\}\r?\n\Z")
TAG = re.compile(r"[\x21\x23-\x27\x2c-\x5b\x5e-\x7a\x7c\x7e]{1,64}")  # ASTRING-CHAR minus "+" (RFC 3501 9)
SEEN, FLAGGED = 1, 2  # Session.flag_bits
STRUCTURE_CACHE = 4  # parsed message structures one session keeps

CAPABILITIES = "IMAP4rev1 LITERAL+ SASL-IR ID NAMESPACE IDLE UIDPLUS SPECIAL-USE UNSELECT CHILDREN"
GREETING = "* OK [CAPABILITY {caps}] Inboxlayer IMAP ready"
BYE_LOGOUT = "* BYE Inboxlayer IMAP logging out"
BYE_IDLE = "* BYE Autologout: idle for too long"
BYE_SLOW = "* BYE Command not completed in time"
BYE_LINE = "* BYE Command line too long"
BYE_LITERAL = "* BYE Literal too large"
BYE_TOO_MANY = "* BYE Too many commands on one connection; reconnect"
BYE_BAD = "* BYE Too many invalid commands"
BYE_THROTTLED = "* BYE Too many failed authentication attempts; try again later"
BYE_REVOKED = "* BYE [UNAVAILABLE] This session's API token is no longer valid; log in again"
BYE_SHUTDOWN = "* BYE Server shutting down; reconnect"
BYE_PRE_AUTH = "* BYE Log in sooner"
NO_AUTH = "NO [AUTHENTICATIONFAILED] Invalid credentials"
NO_PRIVACY = "NO [PRIVACYREQUIRED] Issue STARTTLS first; LOGIN and AUTHENTICATE need TLS"
NO_UNAVAILABLE = "NO [UNAVAILABLE] Temporary server error, try again later"
NO_READ_ONLY = "NO [CANNOT] Sent is read-only: messages cannot be deleted, moved or copied"
NO_EXAMINE = "NO [READ-ONLY] Mailbox was opened with EXAMINE"
NO_MAILBOX = "NO [NONEXISTENT] No such mailbox; there are INBOX and Sent"
NO_APPEND = ("NO [CANNOT] Sent holds the copies Inboxlayer stores when it sends; this message was not sent "
             "through Inboxlayer from this inbox recently, so it is not stored")
NO_FOLDERS = "NO [CANNOT] Folders are fixed: INBOX and Sent"


class Close(Exception):
    """End the session after sending ``line`` (None: nothing more to send)."""

    def __init__(self, line=None):
        super().__init__(line)
        self.line = line


class Bad(Exception):
    """A tagged BAD with this text (the command is refused; the session goes on)."""


@dataclass
class SessionSettings:
    max_line_length: int
    max_literal: int
    max_message_size: int
    idle_timeout: int
    pre_auth_deadline: int
    command_deadline: int
    max_commands: int
    max_bad_commands: int
    idle_max: int
    idle_poll: float

    @classmethod
    def from_config(cls, config):
        imap = config["imap"]
        return cls(max_line_length=imap["max_line_length"], max_literal=imap["max_literal"],
                   max_message_size=config["smtp"]["max_message_size"], idle_timeout=imap["idle_timeout"],
                   pre_auth_deadline=imap["pre_auth_deadline"], command_deadline=imap["command_deadline"],
                   max_commands=imap["max_commands"], max_bad_commands=imap["max_bad_commands"],
                   idle_max=imap["idle_max"], idle_poll=imap["idle_poll"])


class Reader:
    """Lines and exact byte counts from a socket, with its own buffer, so a timeout while waiting
    (IDLE's poll) loses nothing."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(remaining)
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise Close()
        self.buffer += data

    def poll(self, seconds):
        """True when input is waiting (within ``seconds``)."""
        if self.buffer:
            return True
        try:
            self._fill(time.monotonic() + seconds)
        except socket.timeout:
            return False
        return True

    def line(self, limit, idle_deadline, command_seconds):
        """One line (CRLF included, at most ``limit`` octets): its first byte by ``idle_deadline``,
        the rest within ``command_seconds`` of that."""
        line_deadline = time.monotonic() + command_seconds if self.buffer else None
        while True:
            end = self.buffer.find(b"\n", 0, limit)
            if end >= 0:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) >= limit:
                raise Close(BYE_LINE)
            try:
                self._fill(line_deadline or idle_deadline)
            except socket.timeout:
                raise Close(BYE_SLOW if line_deadline else BYE_IDLE) from None
            if line_deadline is None:
                line_deadline = time.monotonic() + command_seconds

    def exact(self, size, deadline, out):
        """Copy ``size`` bytes into ``out`` (a file or bytearray) by ``deadline``."""
        while size:
            if not self.buffer:
                try:
                    self._fill(deadline)
                except socket.timeout:
                    raise Close(BYE_SLOW) from None
            chunk = self.buffer[:size]
            del self.buffer[:len(chunk)]
            size -= len(chunk)
            if isinstance(out, bytearray):
                out += chunk
            else:
                out.write(chunk)


class Session:
    def __init__(self, server, sock, peer, tls, client, connected_at):
        self.server = server
        self.settings = server.settings
        self.backend_throttle = server.throttle
        self.sock = sock
        self.peer = peer
        self.client = client
        self.tls = tls
        self.starttls_offered = not tls
        self.connected_at = connected_at
        self.reader = Reader(sock)
        self.inbox = None
        self.token_id = None
        self.folder = None  # Message.folder of the selected mailbox
        self.read_only = False
        self.uids = None  # array of the selected mailbox's UIDs; sequence number n is uids[n - 1]
        self.flag_bits = None  # per sequence number (index n - 1): SEEN | FLAGGED, as this client knows them
        self.flags_version = None  # mailbox.flags_version when flag_bits was last compared
        self.commands = 0
        self.bad_commands = 0
        self.idle = True
        self.idle_since = time.monotonic()
        self.structures = {}  # uid -> (size, Part), a few, for BODYSTRUCTURE then BODY[1] on one message

    # -- wire ----------------------------------------------------------------------------------

    def send(self, line):
        self.sock.sendall((line + "\r\n").encode("utf-8", "surrogateescape") if isinstance(line, str)
                          else line)

    def capabilities(self):
        if self.inbox is not None:
            return CAPABILITIES
        if not self.tls:
            return CAPABILITIES + " STARTTLS LOGINDISABLED"
        return CAPABILITIES + " AUTH=PLAIN"

    # -- the loop ------------------------------------------------------------------------------

    def handle(self):
        try:
            self.send(GREETING.format(caps=self.capabilities()))
            while True:
                self._serve_one()
        except Close as done:
            if done.line:
                self._send_quietly(done.line)
        except (OSError, socket.timeout) as exc:
            log.debug("IMAP connection from %s ended: %s", self.peer[0], exc)
        except Exception:  # the one session boundary: log it, tell the client, never crash the server
            log.exception("IMAP session from %s failed", self.peer[0])
            self._send_quietly("* BYE Internal server error")
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def _send_quietly(self, line):
        try:
            self.sock.settimeout(5)
            self.send(line)
        except OSError:
            pass

    def interrupt(self):
        """Shutdown: an idle session is told BYE and closed."""
        self._send_quietly(BYE_SHUTDOWN)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _idle_deadline(self):
        now = time.monotonic()
        deadline = now + self.settings.idle_timeout
        if self.inbox is None and self.settings.pre_auth_deadline:
            deadline = min(deadline, self.connected_at + self.settings.pre_auth_deadline)
        return deadline

    def _serve_one(self):
        self.idle, self.idle_since = True, time.monotonic()
        read = self.read_command()
        self.idle = False
        if read is None:
            return
        tag, verb, args = read
        self.commands += 1
        if self.commands > self.settings.max_commands:
            raise Close(BYE_TOO_MANY)
        try:
            self.dispatch(tag, verb, args)
        except Bad as exc:
            self.bad(tag, str(exc))
        except ParseError as exc:
            self.bad(tag, str(exc))
        except OUTAGES as exc:
            log.warning("IMAP %s failed: %s", verb, exc)
            self.send(f"{tag} {NO_UNAVAILABLE}")
        except BlobError as exc:
            log.warning("IMAP %s: stored message unavailable: %s", verb, exc)
            self.send(f"{tag} {NO_UNAVAILABLE}")

    def bad(self, tag, text):
        self.bad_commands += 1
        self.send(f"{tag} BAD {text}")
        if self.bad_commands >= self.settings.max_bad_commands:
            raise Close(BYE_BAD)

    def read_command(self):
        """(tag, VERB, args) of the next command, or None when it was answered already (BAD)."""
        settings = self.settings
        line = self.reader.line(settings.max_line_length, self._idle_deadline(), settings.command_deadline)
        parts, literals, total, nul = [], [], 0, False
        while True:
            total += len(line)
            if b"\x00" in line:  # not allowed in IMAP, and our literal placeholders use it
                nul = True
            if total > settings.max_line_length * 4:
                raise Close(BYE_LINE)
            match = LITERAL.search(line)
            if not match:
                parts.append(line.rstrip(b"\r\n"))
                break
            size, non_sync = int(match.group(1)), bool(match.group(2))
            parts.append(line[:match.start()] + b"\x00%d\x00" % len(literals))
            head = b"".join(parts).split(b" ", 2)
            limit = settings.max_message_size if len(head) > 1 and head[1].upper() == b"APPEND" \
                else settings.max_literal
            if size > limit or len(literals) >= MAX_LITERALS:
                if non_sync:  # the client is sending it anyway: the connection cannot continue
                    raise Close(BYE_LITERAL)
                tag = head[0].decode("ascii", "replace")
                self.bad(tag if TAG.fullmatch(tag) else "*", f"Literal too large (at most {limit} octets)")
                return None
            if not non_sync:
                self.send("+ Ready for literal data")
            literals.append(self._read_literal(size))
            line = self.reader.line(settings.max_line_length, time.monotonic() + settings.command_deadline,
                                    settings.command_deadline)
        raw = b"".join(parts)
        text = raw.decode("utf-8", "surrogateescape")
        tag, _, rest = text.partition(" ")
        if not TAG.fullmatch(tag):
            self.bad("*", "Invalid or missing tag")
            return None
        verb, _, rest = rest.partition(" ")
        if not verb:
            self.bad(tag, "Missing command")
            return None
        if nul:
            self.bad(tag, "NUL is not allowed in a command")
            return None
        try:
            args = grammar.tokenize(rest, literals)
        except ParseError as exc:
            self.bad(tag, str(exc))
            return None
        return tag, verb.upper(), args

    def _read_literal(self, size):
        # A slow upload gets the command deadline plus one second per 64 KiB (at least ~64 KiB/s).
        deadline = time.monotonic() + self.settings.command_deadline + size / 65536
        if size <= SPOOL_IN_MEMORY:
            data = bytearray()
            self.reader.exact(size, deadline, data)
            return Literal(bytes(data))
        spool = tempfile.TemporaryFile()
        self.reader.exact(size, deadline, spool)
        spool.seek(0)
        return Literal(file=spool, size=size)

    # -- dispatch ------------------------------------------------------------------------------

    ANY_STATE = {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
    NOT_AUTHENTICATED = {"LOGIN", "AUTHENTICATE", "STARTTLS"}
    SELECTED = {"FETCH", "SEARCH", "STORE", "CLOSE", "UNSELECT", "EXPUNGE", "UID", "COPY", "MOVE", "CHECK"}

    def dispatch(self, tag, verb, args):
        handler = getattr(self, f"imap_{verb}", None) if verb.isalpha() else None
        if handler is None:
            raise Bad(f"Unknown command {verb[:20]}")
        if verb in self.NOT_AUTHENTICATED:
            if self.inbox is not None:
                raise Bad("Already logged in")
        elif verb not in self.ANY_STATE:
            if self.inbox is None:
                raise Bad("Log in first")
            if verb in self.SELECTED and self.folder is None:
                raise Bad("Select a mailbox first")
        if self.inbox is not None and verb != "LOGOUT" and not mailbox.still_authorized(self.inbox.id, self.token_id):
            raise Close(BYE_REVOKED)
        handler(tag, args)

    # -- any state -----------------------------------------------------------------------------

    def imap_CAPABILITY(self, tag, args):
        self.send(f"* CAPABILITY {self.capabilities()}")
        self.send(f"{tag} OK CAPABILITY completed")

    def imap_NOOP(self, tag, args):
        self._announce_new()
        self.send(f"{tag} OK NOOP completed")

    def imap_CHECK(self, tag, args):
        self._announce_new()
        self.send(f"{tag} OK CHECK completed")

    def imap_LOGOUT(self, tag, args):
        self.send(BYE_LOGOUT)
        self.send(f"{tag} OK LOGOUT completed")
        raise Close()

    def imap_ID(self, tag, args):
        self.send('* ID ("name" "Inboxlayer" "vendor" "Inboxlayer")')
        self.send(f"{tag} OK ID completed")

    # -- not authenticated ---------------------------------------------------------------------

    def imap_STARTTLS(self, tag, args):
        if self.tls:
            raise Bad("TLS is already active")
        self.send(f"{tag} OK Begin TLS negotiation now")
        if self.reader.buffer:  # commands pipelined before the handshake could be injected in clear text
            raise Close("* BYE Data after STARTTLS")
        deadline = self.connected_at + self.settings.pre_auth_deadline if self.settings.pre_auth_deadline else None
        try:
            self.sock = self.server.wrap_tls(self.sock, deadline)
        except OSError as exc:
            log.debug("STARTTLS with %s failed: %s", self.peer[0], exc)
            raise Close() from None
        self.reader = Reader(self.sock)
        self.tls = True

    def imap_LOGIN(self, tag, args):
        if not self.tls:
            self.send(f"{tag} {NO_PRIVACY}")
            return
        if len(args) != 2:
            raise Bad("LOGIN needs a user name and a password")
        self._login(tag, grammar.text_of(args[0]), grammar.text_of(args[1]))

    def imap_AUTHENTICATE(self, tag, args):
        if not self.tls:
            self.send(f"{tag} {NO_PRIVACY}")
            return
        if not args or not isinstance(args[0], Atom) or args[0].upper() != "PLAIN" or len(args) > 2:
            self.send(f"{tag} NO [CANNOT] Only AUTHENTICATE PLAIN is supported")
            return
        if len(args) == 2:
            response = grammar.text_of(args[1])
        else:
            self.send("+ ")
            response = self.reader.line(self.settings.max_line_length, time.monotonic() + self.settings.command_deadline,
                                        self.settings.command_deadline).decode("ascii", "replace").strip()
        if response == "*":
            raise Bad("AUTHENTICATE cancelled")
        try:
            decoded = base64.b64decode(response, validate=True).decode("utf-8")
            _authzid, username, password = decoded.split("\x00")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise Bad("Invalid PLAIN response: base64 of authzid NUL user NUL password") from None
        self._login(tag, username, password)

    def _login(self, tag, username, password):
        if self.backend_throttle.throttled(self.client):
            raise Close(BYE_THROTTLED)
        try:
            inbox, token = mailbox.authenticate(username, password)
        except OUTAGES as exc:
            log.warning("IMAP login failed: %s", exc)
            self.send(f"{tag} {NO_UNAVAILABLE}")
            return
        if inbox is None:
            metrics.IMAP_AUTH_FAILURES.inc()
            if self.backend_throttle.record_failure(self.client):
                self.send(f"{tag} {NO_AUTH}")
                raise Close(BYE_THROTTLED)
            self.send(f"{tag} {NO_AUTH}")
            return
        self.inbox, self.token_id = inbox, token.id
        self.send(f"{tag} OK [CAPABILITY {self.capabilities()}] Logged in as {inbox.address}")

    # -- authenticated -------------------------------------------------------------------------

    def _mailbox_name(self, args, position=0):
        if len(args) <= position:
            raise Bad("Missing mailbox name")
        return grammar.text_of(args[position])

    def imap_NAMESPACE(self, tag, args):
        self.send('* NAMESPACE (("" "/")) NIL NIL')
        self.send(f"{tag} OK NAMESPACE completed")

    def imap_LIST(self, tag, args):
        self._list(tag, args, "LIST")

    def imap_LSUB(self, tag, args):
        self._list(tag, args, "LSUB")

    def _list(self, tag, args, verb):
        args = list(args)
        if args and isinstance(args[0], list):  # LIST-EXTENDED selection options, e.g. (SPECIAL-USE)
            options = {str(o).upper() for o in args.pop(0)}
        else:
            options = set()
        if len(args) >= 4 and isinstance(args[2], Atom) and args[2].upper() == "RETURN":
            args = args[:2]
        if len(args) != 2:
            raise Bad(f"{verb} needs a reference and a mailbox pattern")
        reference, pattern = grammar.text_of(args[0]), grammar.text_of(args[1])
        if pattern == "" and verb == "LIST":
            self.send('* LIST (\\Noselect) "/" ""')
            self.send(f"{tag} OK LIST completed")
            return
        regex = re.compile(re.escape(reference + pattern).replace(r"\*", ".*").replace("%", "[^/]*"),
                           re.IGNORECASE)
        for name in mailbox.FOLDERS:
            if not regex.fullmatch(name):
                continue
            use = mailbox.SPECIAL_USE.get(name)
            if "SPECIAL-USE" in options and not use:
                continue
            attributes = " ".join(a for a in ("\\HasNoChildren", use) if a)
            self.send(f'* {verb} ({attributes}) "/" {name}')
        self.send(f"{tag} OK {verb} completed")

    def imap_SUBSCRIBE(self, tag, args):
        name = self._mailbox_name(args)
        if mailbox.folder_key(name) is None:
            self.send(f"{tag} {NO_MAILBOX}")
            return
        self.send(f"{tag} OK SUBSCRIBE completed (INBOX and Sent are always subscribed)")

    def imap_UNSUBSCRIBE(self, tag, args):
        self.send(f"{tag} {NO_FOLDERS}")

    def imap_CREATE(self, tag, args):
        self.send(f"{tag} {NO_FOLDERS}")

    imap_DELETE = imap_RENAME = imap_CREATE

    def imap_STATUS(self, tag, args):
        name = self._mailbox_name(args)
        if len(args) != 2 or not isinstance(args[1], list):
            raise Bad("STATUS needs a mailbox and a list of items")
        key = mailbox.folder_key(name)
        if key is None:
            self.send(f"{tag} {NO_MAILBOX}")
            return
        total, unseen, highest = mailbox.status(self.inbox.id, key)
        values = {"MESSAGES": total, "RECENT": 0, "UIDNEXT": highest + 1,
                  "UIDVALIDITY": mailbox.uidvalidity(self.inbox), "UNSEEN": unseen}
        items = [str(i).upper() for i in args[1]]
        unknown = [i for i in items if i not in values]
        if unknown:
            raise Bad(f"Unknown STATUS item {unknown[0][:20]}")
        listed = " ".join(f"{i} {values[i]}" for i in items)
        self.send(f"* STATUS {mailbox.imap_name(key)} ({listed})")
        self.send(f"{tag} OK STATUS completed")

    def imap_SELECT(self, tag, args, read_only=False):
        name = self._mailbox_name(args)
        key = mailbox.folder_key(name)
        self.folder, self.uids = None, None
        if key is None:
            self.send(f"{tag} {NO_MAILBOX}")
            return
        self.uids = mailbox.uids(self.inbox.id, key)
        self.folder, self.read_only = key, read_only
        self.flags_version = mailbox.flags_version(self.inbox.id)
        self.flag_bits = self._current_flag_bits()
        self.structures.clear()
        _total, unseen, highest = mailbox.status(self.inbox.id, key)
        self.send("* FLAGS (\\Seen \\Flagged)")
        self.send("* OK [PERMANENTFLAGS (\\Seen \\Flagged)] Flags kept per message")
        self.send(f"* {len(self.uids)} EXISTS")
        self.send("* 0 RECENT")
        self.send(f"* OK [UIDVALIDITY {mailbox.uidvalidity(self.inbox)}] UIDs valid")
        self.send(f"* OK [UIDNEXT {max(highest, self.uids[-1] if self.uids else 0) + 1}] Predicted next UID")
        self.send(f"{tag} OK [{'READ-ONLY' if read_only else 'READ-WRITE'}] "
                  f"{'EXAMINE' if read_only else 'SELECT'} completed")

    def imap_EXAMINE(self, tag, args):
        self.imap_SELECT(tag, args, read_only=True)

    def imap_APPEND(self, tag, args):
        if len(args) < 2 or not isinstance(args[-1], Literal):
            raise Bad("APPEND needs a mailbox and a message literal")
        key = mailbox.folder_key(grammar.text_of(args[0]))
        literal = args[-1]
        try:
            if key is None:
                self.send(f"{tag} NO [TRYCREATE] No such mailbox; there are INBOX and Sent")
                return
            source = literal.file
            if source is None:
                from io import BytesIO
                source = BytesIO(literal.data)
            headers = BytesHeaderParser().parsebytes(source.read(mimetree.MAX_HEADER_BYTES))
            message_id = " ".join(str(headers.get("message-id", "")).split())
            uid = mailbox.find_sent_copy(self.inbox.id, message_id) if key == "sent" else None
            if uid is None:
                self.send(f"{tag} {NO_APPEND}")
                return
            self.send(f"{tag} OK [APPENDUID {mailbox.uidvalidity(self.inbox)} {uid}] "
                      "APPEND completed: this message is already in Sent (stored when it was sent)")
        finally:
            if literal.file is not None:
                literal.file.close()

    # -- selected ------------------------------------------------------------------------------

    def imap_CLOSE(self, tag, args, verb="CLOSE"):
        self.folder, self.uids, self.flag_bits = None, None, None  # nothing to expunge: Sent is read-only
        self.send(f"{tag} OK {verb} completed")

    def imap_UNSELECT(self, tag, args):
        self.imap_CLOSE(tag, args, verb="UNSELECT")

    def imap_EXPUNGE(self, tag, args):
        self.send(f"{tag} {NO_READ_ONLY}")

    imap_COPY = imap_MOVE = imap_EXPUNGE

    def imap_UID(self, tag, args):
        if not args or not isinstance(args[0], Atom):
            raise Bad("UID needs a command")
        verb = args[0].upper()
        handler = {"FETCH": self._fetch, "SEARCH": self._search, "STORE": self._store}.get(verb)
        if verb in ("COPY", "MOVE", "EXPUNGE"):
            self.send(f"{tag} {NO_READ_ONLY}")
            return
        if handler is None:
            raise Bad(f"Unknown UID command {verb[:20]}")
        handler(tag, args[1:], by_uid=True)

    def imap_FETCH(self, tag, args):
        self._fetch(tag, args, by_uid=False)

    def imap_SEARCH(self, tag, args):
        self._search(tag, args, by_uid=False)

    def imap_STORE(self, tag, args):
        self._store(tag, args, by_uid=False)

    def _select_numbers(self, value, by_uid):
        """[(sequence number, uid)] a sequence set (or UID set) names, ascending."""
        if by_uid:
            ranges = grammar.sequence_set(value, self.uids[-1] if self.uids else 0)
            return [(n + 1, uid) for n, uid in enumerate(self.uids) if grammar.in_ranges(uid, ranges)]
        ranges = grammar.sequence_set(value, len(self.uids))
        if any(high > len(self.uids) for _low, high in ranges if high != 0xFFFFFFFF):
            raise Bad("Sequence number beyond the last message")
        return [(n + 1, uid) for n, uid in enumerate(self.uids) if grammar.in_ranges(n + 1, ranges)]

    def _fetch(self, tag, args, by_uid):
        if len(args) != 2:
            raise Bad("FETCH needs a sequence set and data items")
        items = fetch.parse_items(args[1:])
        if by_uid and not any(i.name == "UID" for i in items):
            items.insert(0, fetch.Item("UID"))
        chosen = self._select_numbers(args[0], by_uid)
        sets_seen = not self.read_only and any(i.name == "SECTION" and not i.peek for i in items)
        if sets_seen and not any(i.name == "FLAGS" for i in items):
            items.append(fetch.Item("FLAGS"))
        for start in range(0, len(chosen), mailbox.ROWS_PER_QUERY):
            batch = chosen[start:start + mailbox.ROWS_PER_QUERY]
            metas = {m.uid: m for m in mailbox.metadata(self.inbox.id, self.folder, [uid for _, uid in batch])}
            if sets_seen:
                unseen = [uid for uid, m in metas.items() if not m.seen]
                mailbox.set_flags(self.inbox.id, self.folder, unseen, seen=True)
                for uid in unseen:
                    metas[uid].seen = True
                self._remember_flags(metas.values())
            for number, uid in batch:
                meta = metas.get(uid)
                if meta is not None:
                    self._fetch_one(number, meta, items)
        self.send(f"{tag} OK {'UID ' if by_uid else ''}FETCH completed")

    def _fetch_one(self, number, meta, items):
        needs_file = any(i.name == "SECTION" for i in items) or fetch.needs_structure(items)
        f = mailbox.open_message(meta.blob_key) if needs_file else None
        try:
            size = meta.size
            root = None
            if f is not None:
                f.seek(0, 2)
                size = f.tell()
                if fetch.needs_structure(items):
                    root = (mimetree.scan_headers(f, size) if fetch.headers_suffice(items)
                            else self._structure(meta.uid, f, size))
            pieces = [b"* %d FETCH (" % number]
            for index, item in enumerate(items):
                if index:
                    pieces.append(b" ")
                pieces += self._render(item, meta, f, size, root)
            pieces.append(b")\r\n")
            self._send_pieces(pieces, f)
        finally:
            if f is not None:
                f.close()

    def _structure(self, uid, f, size):
        cached = self.structures.get(uid)
        if cached is not None and cached[0] == size:
            return cached[1]
        root = mimetree.scan(f, size)
        if len(self.structures) >= STRUCTURE_CACHE:
            self.structures.pop(next(iter(self.structures)))
        self.structures[uid] = (size, root)
        return root

    def _render(self, item, meta, f, size, root):
        name = item.name
        if name == "UID":
            return [b"UID %d" % meta.uid]
        if name == "FLAGS":
            return [b"FLAGS " + fetch.flags(meta)]
        if name == "INTERNALDATE":
            return [b"INTERNALDATE " + fetch.internal_date(meta.internal_date)]
        if name == "RFC822.SIZE":
            return [b"RFC822.SIZE %d" % size]
        if name == "ENVELOPE":
            return [b"ENVELOPE " + fetch.envelope(root.headers)]
        if name == "BODYSTRUCTURE":
            return [b"BODYSTRUCTURE " + fetch.body_structure(root)]
        if name == "BODY":
            return [b"BODY " + fetch.body_structure(root, extended=False)]
        found = fetch.section(f, size, root, item) if root is not None or not (item.numbers or item.spec) else None
        label = item.label.encode()
        if found is None:
            return [label + b' ""']
        if found[0] == "bytes":
            data = found[1]
            if item.partial:
                origin, count = item.partial
                data = data[origin:origin + count if count is not None else None]
            return [label + b" {%d}\r\n" % len(data), data]
        _, start, end = found
        if item.partial:
            origin, count = item.partial
            start = min(end, start + origin)
            if count is not None:
                end = min(end, start + count)
        return [label + b" {%d}\r\n" % (end - start), fetch.Range(start, end - start)]

    def _send_pieces(self, pieces, f):
        out = bytearray()
        for piece in pieces:
            if isinstance(piece, fetch.Range):
                self.sock.sendall(out)
                out.clear()
                f.seek(piece.start)
                left = piece.length
                while left:
                    chunk = f.read(min(SEND_CHUNK, left))
                    if not chunk:  # the file is shorter than it was: fill, the literal's length was promised
                        chunk = b" " * min(SEND_CHUNK, left)
                    self.sock.sendall(chunk)
                    left -= len(chunk)
            else:
                out += piece
        if out:
            self.sock.sendall(out)

    def _store(self, tag, args, by_uid):
        if len(args) < 3:
            raise Bad("STORE needs a sequence set, an action and flags")
        if self.read_only:
            self.send(f"{tag} {NO_EXAMINE}")
            return
        action = str(args[1]).upper()
        if action not in ("FLAGS", "+FLAGS", "-FLAGS", "FLAGS.SILENT", "+FLAGS.SILENT", "-FLAGS.SILENT"):
            raise Bad("STORE action must be FLAGS, +FLAGS or -FLAGS (optionally .SILENT)")
        names = args[2] if isinstance(args[2], list) else args[2:]
        flags = {str(n).lower() for n in names}
        if "\\deleted" in flags and not action.startswith("-"):
            self.send(f"{tag} {NO_READ_ONLY}")
            return
        chosen = self._select_numbers(args[0], by_uid)
        wanted = [uid for _, uid in chosen]
        seen, flagged = "\\seen" in flags, "\\flagged" in flags
        if action.startswith("+"):
            mailbox.set_flags(self.inbox.id, self.folder, wanted, seen=True if seen else None,
                              flagged=True if flagged else None)
        elif action.startswith("-"):
            mailbox.set_flags(self.inbox.id, self.folder, wanted, seen=False if seen else None,
                              flagged=False if flagged else None)
        else:
            mailbox.set_flags(self.inbox.id, self.folder, wanted, seen=seen, flagged=flagged)
        by_number = dict((uid, n) for n, uid in chosen)
        for start in range(0, len(wanted), mailbox.ROWS_PER_QUERY):
            metas = mailbox.metadata(self.inbox.id, self.folder, wanted[start:start + mailbox.ROWS_PER_QUERY])
            self._remember_flags(metas)  # this client is told here, not again as another session's change
            if action.endswith(".SILENT"):
                continue
            for meta in metas:
                uid_part = f"UID {meta.uid} " if by_uid else ""
                self.send(f"* {by_number[meta.uid]} FETCH ({uid_part}FLAGS {fetch.flags(meta).decode()})")
        self.send(f"{tag} OK {'UID ' if by_uid else ''}STORE completed")

    def _search(self, tag, args, by_uid):
        args = list(args)
        if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
            charset = grammar.text_of(args[1]).upper()
            if charset not in ("UTF-8", "US-ASCII"):
                self.send(f"{tag} NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
                return
            args = args[2:]
        try:
            test = search.compile_keys(args, self)
        except search.Unsupported as exc:
            self.send(f"{tag} NO [CANNOT] {exc}")
            return
        numbers = {uid: n + 1 for n, uid in enumerate(self.uids)}
        found = []
        for meta in mailbox.all_metadata(self.inbox.id, self.folder):
            number = numbers.get(meta.uid)
            if number is not None and test(meta, number):
                found.append(meta.uid if by_uid else number)
        self.send("* SEARCH" + "".join(f" {n}" for n in found))
        self.send(f"{tag} OK {'UID ' if by_uid else ''}SEARCH completed")

    def _announce_new(self, polling=False):
        """Tell a client with a mailbox selected about messages that arrived since (EXISTS) and
        flags another session changed (unsolicited FETCH FLAGS). ``polling`` (IDLE): compare the
        flags only when the inbox's flags version moved (or new messages came), not every poll."""
        if self.folder is None:
            return False
        new = mailbox.uids(self.inbox.id, self.folder, after=self.uids[-1] if self.uids else 0)
        if new:
            self.uids.extend(new)
            self.flag_bits.extend(bytes(len(new)))
            self.send(f"* {len(self.uids)} EXISTS")
        version = mailbox.flags_version(self.inbox.id)
        if new or not polling or version is None or version != self.flags_version:
            self.flags_version = version
            self._announce_flags()
        return bool(new)

    def _current_flag_bits(self):
        bits = bytearray(len(self.uids))
        for uid, seen, flag in mailbox.flag_rows(self.inbox.id, self.folder):
            index = bisect.bisect_left(self.uids, uid)
            if index < len(self.uids) and self.uids[index] == uid:
                bits[index] = (SEEN if seen else 0) | (FLAGGED if flag else 0)
        return bits

    def _announce_flags(self):
        current = self._current_flag_bits()
        for index, (known, now) in enumerate(zip(self.flag_bits, current)):
            if known != now:
                names = " ".join(n for bit, n in ((SEEN, "\\Seen"), (FLAGGED, "\\Flagged")) if now & bit)
                self.send(f"* {index + 1} FETCH (UID {self.uids[index]} FLAGS ({names}))")
        self.flag_bits = current

    def _remember_flags(self, metas):
        for meta in metas:
            index = bisect.bisect_left(self.uids, meta.uid)
            if index < len(self.uids) and self.uids[index] == meta.uid:
                self.flag_bits[index] = (SEEN if meta.seen else 0) | (FLAGGED if meta.flagged else 0)

    def imap_IDLE(self, tag, args):
        self.send("+ idling")
        started = time.monotonic()
        self.idle = True  # a shutdown may end it with BYE, like a session waiting for a command
        while True:
            if time.monotonic() - started > self.settings.idle_max:
                raise Close("* BYE IDLE lasted too long; reconnect")
            if self.reader.poll(self.settings.idle_poll):
                self.idle = False
                line = self.reader.line(self.settings.max_line_length, time.monotonic() + self.settings.command_deadline,
                                        self.settings.command_deadline)
                if line.strip().upper() == b"DONE":
                    self.send(f"{tag} OK IDLE terminated")
                    return
                raise Bad("Expected DONE")
            if not mailbox.still_authorized(self.inbox.id, self.token_id):
                raise Close(BYE_REVOKED)
            self._announce_new(polling=True)
            gevent.sleep(0)

