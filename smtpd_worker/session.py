"""One SMTP submission connection: the state machine (RFC 5321, 3207, 4954, 1870, 2920, 6531).

A ``Session`` owns the connection (peer, EHLO name, TLS, the authenticated principal) and an
``Envelope`` per mail transaction (MAIL, RCPTs); RSET, EHLO and the end of DATA replace it. The
read loop owns the rules that apply to every command (line length, the command and error
budgets, the idle timeout, STARTTLS before AUTH/MAIL on 587) and then dispatches to one
``smtp_<VERB>`` method per command, each a flat list of guard clauses ending in one reply.
Questions that need data go to the backend (backend.py); the replies are the literal strings
below, mirrored by tests/smtp_codes.py and documented in docs/smtp.md.
"""
import base64
import binascii
import ipaddress
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from dataclasses import field

from core import metrics
from smtpd_worker.backend import BackendUnavailable
from core.errors import KeyRefused
from core.errors import SubmitError

log = logging.getLogger(__name__)

RECV_SIZE = 65536  # bytes asked of the socket per read; TLS hands back at most one 16 KiB record
AUTH_LINE_LIMIT = 12288  # octets of an AUTH command or response line, RFC 4954 section 4
SPOOL_IN_MEMORY = 256 * 1024  # bytes of DATA held in RAM before the spool moves to a temp file
HANDSHAKE_TIMEOUT = 30  # seconds a client gets to finish a TLS handshake, however it trickles it
LAST_REPLY_TIMEOUT = 5  # seconds the parting 421 may take to send before the socket is just closed

# -- replies (RFC 5321 codes with RFC 3463 enhanced codes; docs/smtp.md's reply table) -------------
READY_FOR_TLS = "220 2.0.0 Ready to start TLS"
AUTH_OK = "235 2.7.0 Authentication successful"
OK = "250 2.0.0 OK"
SENDER_OK = "250 2.1.0 OK"
RECIPIENT_OK = "250 2.1.5 OK"
BYE = "221 2.0.0 Bye"
QUIT_LINE = re.compile(rb"QUIT\s*$", re.IGNORECASE)
CANNOT_VRFY = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
HELP = "214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
AUTH_THROTTLED = "421 4.7.0 Too many failed authentication attempts"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address, try again later"
IDLE_TIMEOUT = "421 4.4.2 Idle timeout, closing connection"
PRE_AUTH_TIMEOUT = "421 4.4.2 Authentication not completed in time, closing connection"
LINE_TIMEOUT = "421 4.4.2 Command line not completed in time, closing connection"
DATA_TOO_SLOW = "421 4.4.2 Message data arriving too slowly, closing connection"
SHUTTING_DOWN = "421 4.3.2 Server shutting down, try again later"
TOO_MANY_COMMANDS = "421 4.7.0 Too many commands, closing connection"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
TEMPORARY_ERROR = "451 4.3.0 Temporary server error, try again later"
TOO_MANY_TRANSFERS = "451 4.7.1 Too many messages in transfer for this account at once, try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
LINE_TOO_LONG = "500 5.5.2 Line too long"
UNRECOGNIZED = "500 5.5.2 Command not recognized"
NUL_IN_COMMAND = "500 5.5.2 Syntax error: NUL, CR or invalid UTF-8 in command"
NOT_SMTP = "500 5.5.2 This is an SMTP server"
SYNTAX_EHLO = "501 5.5.4 Syntax: EHLO hostname"
SYNTAX_HELO = "501 5.5.4 Syntax: HELO hostname"
SYNTAX_MAIL = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
SYNTAX_RCPT = "501 5.5.4 Syntax: RCPT TO:<address>"
SYNTAX_NO_ARGS = "501 5.5.4 Syntax error: no parameters allowed"
SYNTAX_VRFY = "501 5.5.4 Syntax: VRFY address"
SYNTAX_AUTH = "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
BAD_SIZE = "501 5.5.4 Syntax: SIZE=<number of octets>"
BAD_BODY = "501 5.5.4 BODY must be 7BIT or 8BITMIME"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
AUTH_CANCELLED = "501 5.7.0 Authentication cancelled"
AUTH_UNDECODABLE = "501 5.5.2 Cannot decode the authentication response"
NOT_IMPLEMENTED = "502 5.5.1 Command not implemented"
EHLO_FIRST = "503 5.5.1 Send EHLO first"
ALREADY_AUTHENTICATED = "503 5.5.1 Already authenticated"
NESTED_MAIL = "503 5.5.1 Nested MAIL command"
MAIL_FIRST = "503 5.5.1 Need MAIL command first"
TLS_ACTIVE = "503 5.5.1 TLS already active"
UNKNOWN_MECHANISM = "504 5.5.4 Unrecognized authentication mechanism"
TLS_REQUIRED = "530 5.7.0 Must issue a STARTTLS command first"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
SENDER_NOT_OWNED = "550 5.7.1 Sender address not owned by authenticated inbox"
# RFC 1870: the limit counts the message as sent, so base64 leaves about 18 MB for attachments.
SIZE_EXCEEDED = ("552 5.3.4 Message size exceeds fixed limit (25 MB), counted as sent: "
                 "base64 leaves about 18 MB for attachments")
NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address requires SMTPUTF8"
NO_RECIPIENTS = "554 5.5.1 No valid recipients"
# End of DATA after the token was revoked (or the inbox changed hands) mid-transaction. Not 535:
# RFC 4954 gives that to the AUTH command, and RFC 5321 4.3.2 lets DATA end only in 250, 451, 452,
# 552, 554, 450 or 550. Permanent, because retrying with the same credentials cannot succeed; the
# next MAIL gets 530 5.7.0 (RFC 4954 section 6: authentication is no longer in force).
CREDENTIALS_REVOKED = "554 5.7.8 Authentication credentials no longer valid, message not accepted"
# The key expired since AUTH: the same two replies, naming the rule (core/keys.py).
KEY_EXPIRED_AT_MAIL = "530 5.7.0 Authentication required: API key expired"
KEY_EXPIRED_AT_DATA = "554 5.7.8 Authentication credentials no longer valid (API key expired), message not accepted"
NUL_IN_DATA = "554 5.6.0 Message contains NUL characters"
UNKNOWN_PARAMETER = "555 5.5.4 Unsupported MAIL or RCPT parameter"

NOT_IMPLEMENTED_VERBS = frozenset({"EXPN", "TURN", "ETRN", "ATRN", "BDAT", "SEND", "SOML", "SAML"})
# A browser or proxy talking HTTP to us: close at once (cross-protocol request smuggling).
HTTP_VERBS = frozenset({"GET", "POST", "PUT", "HEAD", "CONNECT", "OPTIONS", "DELETE", "PATCH"})
TLS_FIRST_VERBS = frozenset({"AUTH", "MAIL", "RCPT", "DATA"})
ERROR_CODES = ("500", "501", "502", "503", "504", "555")  # replies that spend the error budget


class ConnectionLost(Exception):
    """The client went away (EOF or a reset)."""


class DeadlinePassed(Exception):
    """A phase of the session (pre-AUTH, one command line, a DATA upload) ran past its deadline;
    ``reply`` is the 421 that says which."""

    def __init__(self, reply):
        super().__init__(reply)
        self.reply = reply


class ShutdownInterrupt(BaseException):
    """Thrown into an idle session's read by a graceful shutdown. A BaseException so that no
    command-level handler mistakes it for a failure of that command."""


class _TooLong:
    """readline() result for a line over its limit (already drained to its end)."""


TOO_LONG = _TooLong()


class Reader:
    """One buffer in front of the socket: pipelined commands cost one recv, and whatever is left
    after a command (or after DATA) is the next command. ``before_block`` runs before every recv,
    which is where pending replies are flushed (RFC 2920: reply to a whole pipelined group).
    Lines are taken from the buffer by offset, so a burst of pipelined commands is not copied
    once per command.

    Time limits, when ``idle_timeout`` is given (the socket's timeout is then the reader's to set):
    every recv may wait at most ``idle_timeout`` for a byte; a phase deadline (``set_deadline``:
    pre-AUTH, or a DATA upload that must keep a minimum rate) and the per-line deadline (a line
    must be complete ``line_timeout`` seconds after its first byte) are absolute, so a client
    cannot stretch them by trickling one byte at a time. Past one, ``DeadlinePassed`` carries its
    421; a plain silence raises the socket's TimeoutError (the idle 421).
    """

    __slots__ = ("sock", "buf", "pos", "before_block", "idle_timeout", "line_timeout", "deadline",
                 "deadline_reply", "per_byte")

    def __init__(self, sock, before_block, idle_timeout=None, line_timeout=None):
        self.sock = sock
        self.buf = b""
        self.pos = 0
        self.before_block = before_block
        self.idle_timeout = idle_timeout
        self.line_timeout = line_timeout
        self.deadline = None  # time.monotonic() by which the current phase must end, or None
        self.deadline_reply = None
        self.per_byte = 0.0  # seconds each received byte adds to the deadline (DATA's minimum rate)

    def set_deadline(self, deadline, reply=None, per_byte=0.0):
        self.deadline, self.deadline_reply, self.per_byte = deadline, reply, per_byte

    def _recv(self, line_deadline=None):
        if self.idle_timeout is None:  # no time limits managed here (unit tests of the parsers)
            self.before_block()
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionLost()
            return data
        deadline, reply = self.deadline, self.deadline_reply
        if line_deadline is not None and (deadline is None or line_deadline < deadline):
            deadline, reply = line_deadline, LINE_TIMEOUT
        timeout, by_deadline = self.idle_timeout, False
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlinePassed(reply)
            if left < timeout:
                timeout, by_deadline = left, True
        self.sock.settimeout(timeout)  # the flush below is bounded by it too
        try:
            self.before_block()
            data = self.sock.recv(RECV_SIZE)
        except TimeoutError:
            if by_deadline:
                raise DeadlinePassed(reply) from None
            raise
        if not data:
            raise ConnectionLost()
        if self.per_byte:
            self.deadline += len(data) * self.per_byte
        return data

    def _rest(self):
        data = self.buf[self.pos:] if self.pos else self.buf
        self.buf, self.pos = b"", 0
        return data

    def chunk(self):
        """Buffered bytes if any, else the next bytes from the socket."""
        if self.pos < len(self.buf):
            return self._rest()
        return self._recv()

    def unread(self, data):
        self.buf = data + self._rest()

    def discard(self):
        self.buf, self.pos = b"", 0

    def readline(self, limit):
        """The next line including its LF, or TOO_LONG after reading past its end. Once the
        line has begun it must end within ``line_timeout`` seconds, over-long or not."""
        end = self.buf.find(b"\n", self.pos)
        if 0 <= end < self.pos + limit:
            line = self.buf[self.pos:end + 1]
            self.pos = end + 1
            return line
        buf = self._rest()
        line_deadline = None
        if buf and self.line_timeout:  # begun in an earlier read: count from now
            line_deadline = time.monotonic() + self.line_timeout
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                self.buf = buf[end + 1:]
                return buf[:end + 1] if end < limit else TOO_LONG
            if len(buf) >= limit:
                break
            buf += self._recv(line_deadline)
            if line_deadline is None and self.line_timeout:
                line_deadline = time.monotonic() + self.line_timeout
        while True:  # drain the rest of an over-long line without keeping it
            end = buf.find(b"\n")
            if end >= 0:
                self.buf = buf[end + 1:]
                return TOO_LONG
            buf = self._recv(line_deadline)


# -- DATA ------------------------------------------------------------------------------------------

END_OF_DATA = b"\r\n.\r\n"
_STUFFED_DOT = re.compile(rb"^\.(?!\r?\n)", re.M)  # RFC 5321 4.5.2: drop a leading dot if more follows
_BARE_LF = re.compile(rb"(?<!\r)\n")


def receive_data(reader, spool, max_size, max_line):
    """Read DATA up to ``<CRLF>.<CRLF>`` into ``spool``; return None or the refusal reply.

    Works on whole lines per received chunk (so a 25 MB message costs a few thousand regex
    passes, not a Python step per line). Only CRLF '.' CRLF ends the data: a dot line after a
    bare LF, or bare-CR variants, stay data, so no input can split one message into two. Bare
    LF becomes CRLF, bare CR is kept. After an error the rest is read and dropped, never
    buffered, and the reply waits for the real end of the data.
    """
    ctx = b"\r\n"  # the last two bytes of the line before: the DATA command's line end
    pending = b""  # a line not yet ended
    size = 0
    while True:
        data = reader.chunk()
        if pending:
            data = pending + data
        cut = data.rfind(b"\n") + 1
        lines, pending = data[:cut], data[cut:]
        if lines:
            if ctx == b"\r\n" and lines.startswith(b".\r\n"):
                reader.unread(lines[3:] + pending)
                return None
            end = lines.find(END_OF_DATA)
            if end >= 0:
                reader.unread(lines[end + 5:] + pending)
                size, error = _store(lines[:end + 2], spool, size, max_size, max_line)
                return error
            size, error = _store(lines, spool, size, max_size, max_line)
            ctx = lines[-2:] if len(lines) >= 2 else (ctx + lines)[-2:]
            if error:
                reader.unread(pending)
                _discard_to_end(reader, ctx)
                return error
        if len(pending) >= max_line:
            _discard_to_end(reader, pending[-4:])
            return LINE_TOO_LONG


def _store(lines, spool, size, max_size, max_line):
    """Check, unstuff, normalise and write complete lines. Returns (size, error reply or None)."""
    if b"\0" in lines:
        return size, NUL_IN_DATA
    if len(lines) > max_line and max(map(len, lines.split(b"\n"))) >= max_line:
        return size, LINE_TOO_LONG
    if lines.startswith(b".") or b"\n." in lines:
        lines = _STUFFED_DOT.sub(b"", lines)
    if lines.count(b"\n") != lines.count(b"\r\n"):
        lines = _BARE_LF.sub(b"\r\n", lines)
    size += len(lines)
    if size > max_size:
        return size, SIZE_EXCEEDED
    spool.write(lines)
    return size, None


def _discard_to_end(reader, tail):
    """Read and drop everything up to the end of DATA; keep what follows for the next command."""
    window = tail[-4:]
    while True:
        data = window + reader.chunk()
        end = data.find(END_OF_DATA)
        if end >= 0:
            reader.unread(data[end + 5:])
            return
        window = data[-4:]


# -- addresses --------------------------------------------------------------------------------------

_ATEXT = r"\-A-Za-z0-9!#$%&'*+/=?^_`{|}~"
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_DOT_ATOM_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
_QUOTED_UTF8 = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class AddressSyntax(ValueError):
    """The path is not a valid RFC 5321 mailbox; ``reply_for`` picks the code."""

    def __init__(self, needs_utf8=False):
        super().__init__()
        self.needs_utf8 = needs_utf8


def split_path(arg, keyword):
    """Split 'FROM:<path> params' into (path, [params]); None on bad syntax."""
    if arg[:len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword):].lstrip(" ")
    if not rest.startswith("<"):
        return None
    quoted = escaped = False
    for index in range(1, len(rest)):
        char = rest[index]
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            params = rest[index + 1:]
            if params and not params.startswith(" "):
                return None
            return rest[1:index], params.split()
    return None


def parse_mailbox(path, utf8):
    """Validate a mailbox from a path; return it (source route dropped). '' is the null path."""
    if path.startswith("@"):  # RFC 5321 4.1.2: a source route is accepted and ignored
        path = path.partition(":")[2]
    if not path:
        return ""
    if not path.isascii() and not utf8:
        raise AddressSyntax(needs_utf8=True)
    local, at, domain = path.rpartition("@")
    if not at or not local or not domain or len(local.encode()) > 64 or len(path.encode()) > 254:
        raise AddressSyntax()
    dot_atom, quoted = (_DOT_ATOM_UTF8, _QUOTED_UTF8) if utf8 else (_DOT_ATOM, _QUOTED)
    if not (dot_atom.fullmatch(local) or quoted.fullmatch(local)):
        raise AddressSyntax()
    if not _valid_domain(domain):
        raise AddressSyntax()
    return path


def _valid_domain(domain):
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if literal[:5].upper() == "IPV6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return False
        return True
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    labels = domain.split(".")
    return len(domain) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


# -- the session ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionSettings:
    """The per-connection limits, read once from the settings (see config.toml [smtp])."""

    hostname: str
    max_message_size: int
    max_recipients: int
    max_line_length: int
    max_data_line_length: int
    idle_timeout: float
    max_commands: int
    max_bad_commands: int
    pre_auth_deadline: float = 0  # seconds from connect to a successful AUTH; 0 = none
    command_deadline: float = 0  # seconds a command line may take once begun; 0 = none
    data_min_rate: int = 0  # bytes per second a DATA upload must average; 0 = none
    max_data_per_account: int = 0  # DATA uploads in progress per account in this process; 0 = no cap

    @classmethod
    def from_config(cls, config):
        smtp = config["smtp"]
        return cls(hostname=smtp["public_host"], max_message_size=smtp["max_message_size"],
                   max_recipients=smtp["max_recipients"], max_line_length=smtp["max_line_length"],
                   max_data_line_length=smtp["max_data_line_length"], idle_timeout=smtp["idle_timeout"],
                   max_commands=smtp["max_commands"], max_bad_commands=smtp["max_bad_commands"],
                   pre_auth_deadline=smtp["pre_auth_deadline"], command_deadline=smtp["command_deadline"],
                   data_min_rate=smtp["data_min_rate"], max_data_per_account=smtp["max_data_per_account"])


@dataclass
class Envelope:
    mail_from: str
    smtputf8: bool = False
    rcpt_tos: list = field(default_factory=list)
    rcpt_keys: set = field(default_factory=set)
    first_contacts: int = 0  # accepted recipients this inbox has never mailed (core/recipients.py)
    refused: list = field(default_factory=list)  # [(address, reply)] refused by recipient safety


class Session:
    """One client connection, from greeting to close. ``server`` provides ``settings``,
    ``backend``, ``tls_context``, the ``stopping`` flag and ``transfers`` (DATA uploads in
    progress per account). ``connected_at`` (time.monotonic() at accept) starts the pre-AUTH
    deadline; ``client`` is what the per-address limits count by (server.client_key)."""

    __slots__ = ("server", "settings", "backend", "sock", "peer_ip", "client", "tls", "starttls_offered", "reader",
                 "out", "ehlo_name", "principal", "envelope", "commands", "bad_commands", "closing", "idle",
                 "idle_since", "connected_at")

    def __init__(self, server, sock, peer, tls, starttls_offered, connected_at=None, client=None):
        self.server = server
        self.settings = server.settings
        self.backend = server.backend
        self.sock = sock
        self.peer_ip = peer[0] if isinstance(peer, tuple) else str(peer)
        self.client = client or self.peer_ip
        self.tls = tls
        self.starttls_offered = starttls_offered
        self.connected_at = time.monotonic() if connected_at is None else connected_at
        self.reader = Reader(sock, self.flush, self.settings.idle_timeout, self.settings.command_deadline or None)
        self.out = []
        self.ehlo_name = None
        self.principal = None
        self.envelope = None
        self.commands = 0
        self.bad_commands = 0
        self.closing = False
        self.idle = False
        self.idle_since = 0.0

    # -- output ----------------------------------------------------------------------------------

    def reply(self, text):
        self.out.append(text + "\r\n")
        if text[:3] in ERROR_CODES:
            self.bad_commands += 1
            if self.bad_commands > self.settings.max_bad_commands:
                self.close_with(TOO_MANY_ERRORS)

    def flush(self):
        if self.out:
            data = "".join(self.out).encode("utf-8")
            self.out.clear()
            self.sock.sendall(data)

    def close_with(self, text):
        self.out.append(text + "\r\n")
        self.closing = True

    # -- the loop ----------------------------------------------------------------------------------

    def handle(self):
        """Serve the connection until QUIT, an error or a close; never raises."""
        try:
            self.sock.settimeout(self.settings.idle_timeout)
            self._serve()
        except ConnectionLost:
            pass
        except ShutdownInterrupt:
            self._send_last(SHUTTING_DOWN)
        except DeadlinePassed as exc:
            log.info("closing %s: %s", self.peer_ip, exc.reply[10:])
            self._send_last(exc.reply)
        except TimeoutError:
            self._send_last(IDLE_TIMEOUT)
        except OSError as exc:  # resets, TLS errors: the client's problem, not ours
            log.debug("connection from %s ended: %s", self.peer_ip, exc)
        except Exception:  # the session's top-level boundary: log, answer, close; never crash the server
            log.exception("session from %s failed", self.peer_ip)
            self._send_last(TEMPORARY_ERROR)
        finally:
            self.sock.close()

    def _send_last(self, text):
        self.out.append(text + "\r\n")
        try:
            self.sock.settimeout(LAST_REPLY_TIMEOUT)  # a client that reads nothing does not keep us
            self.flush()
        except OSError:
            pass

    def _serve(self):
        if self.backend.auth_throttled(self.client):
            self._send_last(AUTH_THROTTLED)
            return
        self._require_auth_by(self.connected_at)
        self.reply(f"220 {self.settings.hostname} ESMTP Inboxlayer")
        while not self.closing:
            self.idle, self.idle_since = True, time.monotonic()
            line = self.reader.readline(AUTH_LINE_LIMIT)
            self.idle = False
            if self.server.stopping and not QUIT_LINE.match(line if isinstance(line, bytes) else b""):
                # Shutting down: the QUIT that follows a 250 still gets its 221 (a client that
                # sees 421 there may think the message was lost and send it again); anything
                # else is told to come back later.
                self.close_with(SHUTTING_DOWN)
                break
            self.dispatch(line)
        self.flush()

    def dispatch(self, line):
        self.commands += 1
        if self.commands > self.settings.max_commands:
            return self.close_with(TOO_MANY_COMMANDS)
        if line is TOO_LONG:
            return self.reply(LINE_TOO_LONG)
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if len(line) + 2 > self.settings.max_line_length and line[:5].upper() != b"AUTH ":
            return self.reply(LINE_TOO_LONG)
        if b"\0" in line or b"\r" in line:
            return self.reply(NUL_IN_COMMAND)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self.reply(NUL_IN_COMMAND)
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        handler = HANDLERS.get(verb)
        if handler is None:
            if verb in HTTP_VERBS:
                return self.close_with(NOT_SMTP)
            return self.reply(NOT_IMPLEMENTED if verb in NOT_IMPLEMENTED_VERBS else UNRECOGNIZED)
        if verb in TLS_FIRST_VERBS and not self.tls:
            return self.reply(TLS_REQUIRED)
        try:
            handler(self, arg.strip(" "))
        except SubmitError as exc:
            self.reply(exc.smtp_reply)
        except BackendUnavailable as exc:
            log.warning("backend unavailable during %s from %s: %s", verb, self.peer_ip, exc)
            self.reply(TEMPORARY_ERROR)
        except (ConnectionLost, DeadlinePassed, OSError):
            raise
        except Exception:  # one command failed unexpectedly: log it, answer 451, keep serving
            log.exception("%s from %s failed", verb, self.peer_ip)
            self.envelope = None
            self.reply(TEMPORARY_ERROR)

    def _require_auth_by(self, start):
        """Arm the pre-AUTH deadline: AUTH must succeed within ``pre_auth_deadline`` of ``start``
        (the connect, or the moment a revoked token lost its authentication)."""
        if self.settings.pre_auth_deadline:
            self.reader.set_deadline(start + self.settings.pre_auth_deadline, PRE_AUTH_TIMEOUT)

    def _authenticated(self, principal):
        self.principal = principal
        self.reader.set_deadline(None)

    def _lose_authentication(self):
        """The token was revoked (or the inbox changed hands) since AUTH."""
        self.principal = None
        self._require_auth_by(time.monotonic())

    # -- commands ----------------------------------------------------------------------------------

    def smtp_EHLO(self, arg):
        if not arg:
            return self.reply(SYNTAX_EHLO)
        self.ehlo_name = arg
        self.envelope = None
        lines = [self.settings.hostname, "PIPELINING", f"SIZE {self.settings.max_message_size}", "8BITMIME",
                 "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        if self.tls:
            lines.append("AUTH PLAIN LOGIN")
        elif self.starttls_offered:
            lines.append("STARTTLS")
        lines.append("HELP")
        self.out.append("".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n")

    def smtp_HELO(self, arg):
        if not arg:
            return self.reply(SYNTAX_HELO)
        self.ehlo_name = arg
        self.envelope = None
        self.reply(f"250 {self.settings.hostname}")

    def smtp_STARTTLS(self, arg):
        if arg:
            return self.reply(SYNTAX_NO_ARGS)
        if self.tls or not self.starttls_offered:
            return self.reply(TLS_ACTIVE)
        self.reply(READY_FOR_TLS)
        self.flush()
        # RFC 3207 section 4.2: anything pipelined after STARTTLS arrived in clear; drop it.
        self.reader.discard()
        try:
            self.sock = self.server.wrap_tls(self.sock, self.reader.deadline)
        except OSError as exc:  # a failed or stalled handshake: nothing more can be said in clear
            log.debug("STARTTLS handshake with %s failed: %s", self.peer_ip, exc)
            raise ConnectionLost() from exc
        self.reader.sock = self.sock
        self.tls = True
        # ...and forget everything learnt before TLS (section 4.2 again).
        self.ehlo_name = None
        self.principal = None
        self.envelope = None

    def smtp_AUTH(self, arg):
        if not self.ehlo_name:
            return self.reply(EHLO_FIRST)
        if self.principal is not None:
            return self.reply(ALREADY_AUTHENTICATED)
        mechanism, _, initial = arg.partition(" ")
        if not mechanism:
            return self.reply(SYNTAX_AUTH)
        read_credentials = AUTH_MECHANISMS.get(mechanism.upper())
        if read_credentials is None:
            return self.reply(UNKNOWN_MECHANISM)
        if self.backend.auth_throttled(self.client):
            return self.close_with(AUTH_THROTTLED)
        credentials = read_credentials(self, initial.strip(" "))
        if credentials is None:
            return None
        refusal = AUTH_FAILED
        try:
            principal = self.backend.authenticate(*credentials, client_ip=self.client)
        except KeyRefused as exc:  # a valid key whose scope, permissions or expiry refuse this inbox
            principal, refusal = None, exc.smtp_reply
        if principal is None:
            log.info("failed AUTH from %s as %r", self.peer_ip, credentials[0][:100])
            metrics.SMTP_AUTH_FAILURES.inc()
            if self.backend.record_auth_failure(self.client):
                return self.close_with(AUTH_THROTTLED)
            return self.reply(refusal)
        self._authenticated(principal)
        self.reply(AUTH_OK)

    def _auth_plain(self, initial):
        response = self._auth_response(initial, "334 ")
        if response is None:
            return None
        parts = response.split("\0")
        if len(parts) != 3:
            self.reply(AUTH_UNDECODABLE)
            return None
        authzid, username, password = parts
        if authzid and authzid != username:
            return username, None  # acting as someone else is not offered: a plain failure
        return username, password

    def _auth_login(self, initial):
        username = self._auth_response(initial, "334 VXNlcm5hbWU6")  # "Username:"
        if username is None:
            return None
        password = self._auth_response("", "334 UGFzc3dvcmQ6")  # "Password:"
        if password is None:
            return None
        return username, password

    def _auth_response(self, initial, challenge):
        """Decode the initial response, or send ``challenge`` and read one; None after replying."""
        if initial == "=":  # RFC 4954: an empty initial response
            return ""
        if not initial:
            self.reply(challenge)
            line = self.reader.readline(AUTH_LINE_LIMIT)
            if line is TOO_LONG:
                self.reply(LINE_TOO_LONG)
                return None
            initial = line.rstrip(b"\r\n").decode("ascii", "replace").strip(" ")
            if initial == "*":
                self.reply(AUTH_CANCELLED)
                return None
        try:
            return base64.b64decode(initial, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            self.reply(AUTH_UNDECODABLE)
            return None

    def smtp_MAIL(self, arg):
        if self.principal is None:
            return self.reply(AUTH_REQUIRED)
        if self.envelope is not None:
            return self.reply(NESTED_MAIL)
        parsed = split_path(arg, "FROM:")
        if parsed is None:
            return self.reply(SYNTAX_MAIL)
        path, params = parsed
        smtputf8 = False
        for param in params:
            name, _, value = param.partition("=")
            name = name.upper()
            if name == "SIZE":
                if not value.isdigit() or len(value) > 20:
                    return self.reply(BAD_SIZE)
                if int(value) > self.settings.max_message_size:
                    return self.reply(SIZE_EXCEEDED)
            elif name == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return self.reply(BAD_BODY)
            elif name == "SMTPUTF8" and not value:
                smtputf8 = True
            elif name != "AUTH":  # RFC 4954 section 5: AUTH=<...> may be ignored
                return self.reply(UNKNOWN_PARAMETER)
        try:
            address = parse_mailbox(path, smtputf8)
        except AddressSyntax as exc:
            return self.reply(NEEDS_SMTPUTF8 if exc.needs_utf8 else BAD_SENDER)
        if not address:  # null sender: this is submission, not a bounce relay
            return self.reply(SENDER_NOT_OWNED)
        try:
            principal = self.backend.refresh(self.principal)
        except KeyRefused:  # the key expired since AUTH
            self._lose_authentication()
            return self.reply(KEY_EXPIRED_AT_MAIL)
        if principal is None:  # the token was revoked since AUTH
            self._lose_authentication()
            return self.reply(AUTH_REQUIRED)
        self.principal = principal
        self.backend.authorize_sender(principal, address)
        self.backend.check_not_paused(principal)
        self.backend.check_rate(principal)
        self.envelope = Envelope(address, smtputf8)
        self.reply(SENDER_OK)

    def smtp_RCPT(self, arg):
        if self.envelope is None:
            return self.reply(MAIL_FIRST)
        parsed = split_path(arg, "TO:")
        if parsed is None:
            return self.reply(SYNTAX_RCPT)
        path, params = parsed
        if params:
            return self.reply(UNKNOWN_PARAMETER)
        try:
            address = parse_mailbox(path, self.envelope.smtputf8)
        except AddressSyntax as exc:
            return self.reply(NEEDS_SMTPUTF8 if exc.needs_utf8 else BAD_RECIPIENT)
        if not address:
            return self.reply(BAD_RECIPIENT)
        envelope = self.envelope
        key = address.lower()
        if key in envelope.rcpt_keys:  # one send per address, however often it is named
            return self.reply(RECIPIENT_OK)
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return self.reply(TOO_MANY_RECIPIENTS)
        try:  # suppression, policy, first-contact cap: refused here, the other recipients still go
            first_contact = self.backend.check_recipient(self.principal, address, envelope.first_contacts)
        except SubmitError as exc:
            envelope.refused.append((address, exc.smtp_reply))
            raise
        self.backend.check_recipient_quota(self.principal, len(envelope.rcpt_tos) + 1)
        envelope.first_contacts += first_contact
        envelope.rcpt_tos.append(address)
        envelope.rcpt_keys.add(key)
        self.reply(RECIPIENT_OK)

    def smtp_DATA(self, arg):
        if self.envelope is None:
            return self.reply(MAIL_FIRST)
        if not self.envelope.rcpt_tos:
            return self.reply(NO_RECIPIENTS)
        if arg:
            return self.reply(SYNTAX_NO_ARGS)
        account = self.principal.account
        if not self.server.transfers.take(account):
            return self.reply(TOO_MANY_TRANSFERS)
        try:
            envelope, self.envelope = self.envelope, None
            self.reply(START_DATA)
            accepted = self._receive_and_submit(envelope)
        finally:
            self.server.transfers.give_back(account)
        if accepted is not None:
            self.reply(f"250 2.0.0 OK {'already queued' if accepted.replayed else 'queued'} as {accepted.public_id}")

    def _receive_and_submit(self, envelope):
        """Spool the data (at ``data_min_rate`` or better) and submit it; the queued id, or None
        after replying with the refusal."""
        rate = self.settings.data_min_rate
        if rate:  # a start allowance of one command's time, then every byte buys 1/rate seconds
            self.reader.set_deadline(time.monotonic() + (self.settings.command_deadline or self.settings.idle_timeout),
                                     DATA_TOO_SLOW, 1.0 / rate)
        try:
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
                refusal = receive_data(self.reader, spool, self.settings.max_message_size,
                                       self.settings.max_data_line_length)
                if refusal is not None:
                    self.reply(refusal)
                    return None
                # Revocation takes effect on a transaction in progress too: no 250 for a token
                # revoked (or an inbox given up) while its data was arriving.
                try:
                    principal = self.backend.refresh(self.principal)
                except KeyRefused:
                    log.info("key of %s expired during DATA from %s", self.principal.address, self.peer_ip)
                    self._lose_authentication()
                    self.reply(KEY_EXPIRED_AT_DATA)
                    return None
                if principal is None:
                    log.info("token of %s revoked during DATA from %s", self.principal.address, self.peer_ip)
                    self._lose_authentication()
                    self.reply(CREDENTIALS_REVOKED)
                    return None
                self.principal = principal
                return self.backend.submit(principal, envelope.mail_from, envelope.rcpt_tos, spool, envelope.refused,
                                           all_known=envelope.first_contacts == 0)
        finally:
            if rate and self.principal is not None:
                self.reader.set_deadline(None)

    def smtp_RSET(self, arg):
        if arg:
            return self.reply(SYNTAX_NO_ARGS)
        self.envelope = None
        self.reply(OK)

    def smtp_NOOP(self, arg):
        self.reply(OK)

    def smtp_VRFY(self, arg):
        if not arg:
            return self.reply(SYNTAX_VRFY)
        self.reply(CANNOT_VRFY)

    def smtp_HELP(self, arg):
        self.reply(HELP)

    def smtp_QUIT(self, arg):
        self.close_with(BYE)

    def interrupt(self):
        """Wake this session if it is blocked reading its next command (graceful shutdown).

        gevent's cancel_wait throws only into a greenlet still waiting on the socket's read
        watcher when the hub gets to it, so a session that has meanwhile started a command is
        left alone; the socket and its TLS state stay intact for the 421.
        """
        self.sock.hub.cancel_wait(self.sock._read_event, ShutdownInterrupt())


HANDLERS = {name[5:]: getattr(Session, name) for name in dir(Session) if name.startswith("smtp_")}
AUTH_MECHANISMS = {"PLAIN": Session._auth_plain, "LOGIN": Session._auth_login}
