"""The SMTP replies clients see, written out independently of smtpd_worker/session.py.

The first block is the submission reply table of docs/smtp.md, word for word; the rest are the
protocol replies documented there too. Tests compare with ``==`` against these, so a reply that drifts
from the documented one fails a test.
"""

# -- the submission reply table (docs/smtp.md) ------------------------------------------------------
TLS_REQUIRED = "530 5.7.0 Must issue a STARTTLS command first"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_THROTTLED = "421 4.7.0 Too many failed authentication attempts"
SENDER_NOT_OWNED = "550 5.7.1 Sender address not owned by authenticated inbox"


def domain_not_verified(domain):
    return f"550 5.7.1 Domain {domain} is not verified"


# The table's words, plus what "25 MB" counts (the message as sent, after base64).
SIZE_EXCEEDED = ("552 5.3.4 Message size exceeds fixed limit (25 MB), counted as sent: "
                 "base64 leaves about 18 MB for attachments")


def quota_exceeded(used, limit):
    return f"550 5.4.5 Daily sending quota exceeded ({used}/{limit}, resets 00:00 UTC)"


# API keys (core/keys.py): the AUTH refusal names the rule; the per-key cap is worded like the quota.
KEY_OUT_OF_SCOPE = "535 5.7.8 Authentication credentials invalid: inbox outside the API key's scope"
KEY_LACKS_SEND = "535 5.7.8 Authentication credentials invalid: API key lacks the send permission"
KEY_EXPIRED = "535 5.7.8 Authentication credentials invalid: API key expired"
KEY_EXPIRED_AT_MAIL = "530 5.7.0 Authentication required: API key expired"
KEY_EXPIRED_AT_DATA = "554 5.7.8 Authentication credentials no longer valid (API key expired), message not accepted"
SIMULATOR_MIXED = "550 5.5.4 Simulator recipients cannot be mixed with other recipients in one message"
IDEMPOTENCY_CONFLICT = "554 5.6.0 This Idempotency-Key was used with a different message"


def key_limit(used, limit):
    return f"550 5.4.5 Daily sending limit of this API key exceeded (key limit {used}/{limit}, resets 00:00 UTC)"


def already_queued(public_id):
    return f"250 2.0.0 OK already queued as {public_id}"


RATE_LIMITED = "451 4.7.1 Sending rate limit exceeded, try again later"


# -- recipient safety (docs/smtp.md reply table) ----------------------------------------------------
def recipient_suppressed(address, reason):
    return f"550 5.1.1 <{address}>: on this account's suppression list ({reason})"


def recipient_not_allowed(address):
    return f"550 5.7.1 <{address}>: not allowed by this inbox's recipient policy"


def new_recipient_limit(used, limit):
    return f"451 4.7.1 new-recipient limit reached ({used}/{limit} today, resets 00:00 UTC)"


def inbox_paused(reason):
    return f"550 5.7.1 inbox paused: {reason}; resume it in the dashboard"


TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TEMPORARY_ERROR = "451 4.3.0 Temporary server error, try again later"
LINE_TOO_LONG = "500 5.5.2 Line too long"
QUEUED_PREFIX = "250 2.0.0 OK queued as ob_"
IDLE_TIMEOUT = "421 4.4.2 Idle timeout, closing connection"

# -- connection-level limits (docs/smtp.md, "Replies") ----------------------------------------------
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address, try again later"
PRE_AUTH_TIMEOUT = "421 4.4.2 Authentication not completed in time, closing connection"
LINE_TIMEOUT = "421 4.4.2 Command line not completed in time, closing connection"
DATA_TOO_SLOW = "421 4.4.2 Message data arriving too slowly, closing connection"
TOO_MANY_TRANSFERS = "451 4.7.1 Too many messages in transfer for this account at once, try again later"
CREDENTIALS_REVOKED = "554 5.7.8 Authentication credentials no longer valid, message not accepted"

# -- the header section (docs/smtp.md, "Replies" and "Message handling") ---------------------------
HEADER_TOO_LARGE = "552 5.3.4 Message header section exceeds fixed limit (256 KiB)"
TOO_MANY_HEADER_FIELDS = "552 5.3.4 Too many header fields (at most 1000)"
BARE_CR_IN_HEADER = "554 5.6.0 Bare CR in the header section (CR must be followed by LF)"
TOO_MANY_LISTED_RECIPIENTS = "554 5.5.3 Too many addresses in To: and Cc: (at most 49; use Bcc for more)"
ADDRESS_HEADERS_TOO_COMPLEX = "554 5.6.0 Address headers too complex (more than 5000 tokens)"


def malformed_header_line(number):
    return f"554 5.6.0 Malformed header line {number}: neither a field (name and colon) nor a continuation"


def malformed_address_header(field, reason):
    return f"554 5.6.0 Malformed {field}: header: {reason}"


def sender_field_not_owned(field):
    return f"550 5.7.1 {field}: header address not owned by authenticated inbox"


# -- protocol replies (docs/smtp.md) ----------------------------------------------------------------
READY_FOR_TLS = "220 2.0.0 Ready to start TLS"
AUTH_OK = "235 2.7.0 Authentication successful"
OK = "250 2.0.0 OK"
SENDER_OK = "250 2.1.0 OK"
RECIPIENT_OK = "250 2.1.5 OK"
BYE = "221 2.0.0 Bye"
CANNOT_VRFY = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
HELP = "214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
SHUTTING_DOWN = "421 4.3.2 Server shutting down, try again later"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
TOO_MANY_COMMANDS = "421 4.7.0 Too many commands, closing connection"
UNRECOGNIZED = "500 5.5.2 Command not recognized"
BAD_COMMAND_BYTES = "500 5.5.2 Syntax error: NUL, CR or invalid UTF-8 in command"
NOT_SMTP = "500 5.5.2 This is an SMTP server"
SYNTAX_EHLO = "501 5.5.4 Syntax: EHLO hostname"
SYNTAX_MAIL = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
SYNTAX_RCPT = "501 5.5.4 Syntax: RCPT TO:<address>"
SYNTAX_NO_ARGS = "501 5.5.4 Syntax error: no parameters allowed"
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
NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address requires SMTPUTF8"
NO_RECIPIENTS = "554 5.5.1 No valid recipients"
NUL_IN_DATA = "554 5.6.0 Message contains NUL characters"
UNKNOWN_PARAMETER = "555 5.5.4 Unsupported MAIL or RCPT parameter"
LOGIN_USERNAME = "334 VXNlcm5hbWU6"
LOGIN_PASSWORD = "334 UGFzc3dvcmQ6"
PLAIN_CHALLENGE = "334 "

EHLO_BEFORE_TLS = ("250-localhost\n250-PIPELINING\n250-SIZE 26214400\n250-8BITMIME\n250-SMTPUTF8\n"
                   "250-ENHANCEDSTATUSCODES\n250-STARTTLS\n250 HELP")
EHLO_AFTER_TLS = ("250-localhost\n250-PIPELINING\n250-SIZE 26214400\n250-8BITMIME\n250-SMTPUTF8\n"
                  "250-ENHANCEDSTATUSCODES\n250-AUTH PLAIN LOGIN\n250 HELP")
