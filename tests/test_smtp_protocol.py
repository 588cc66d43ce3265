"""The SMTP state machine over real sockets, against a server with the DiscardBackend.

No database here: these are protocol rules (RFC 5321/3207/4954/1870/2920/6531) and abuse
cases. The backend copies each accepted message to a capture directory so the bytes the
session stored can be checked.
"""
import base64
import re

import pytest

from tests import smtp_codes as codes
from tests.fixtures_smtp import start_discard_server
from tests.fixtures_smtp import stop_server
from tests.fixtures_smtp import tls_context

SENDER = "agent@inboxlayer.dev"
HEADERS = f"From: {SENDER}\r\nTo: a@example.com\r\nSubject: t\r\n\r\n"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def queued_id(reply):
    assert reply.startswith(codes.QUEUED_PREFIX), reply
    return reply.split(" as ", 1)[1]


def captured(server, reply):
    return (server.capture_dir / f"{queued_id(reply)}.eml").read_bytes()


def start_transaction(client, recipients=("a@example.com",)):
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == codes.SENDER_OK
    for rcpt in recipients:
        assert client.cmd(f"RCPT TO:<{rcpt}>") == codes.RECIPIENT_OK
    assert client.cmd("DATA") == codes.START_DATA


def assert_still_serving(raw_client):
    other = raw_client(login=True)
    start_transaction(other)
    other.send(HEADERS + "still here\r\n.\r\n")
    assert other.reply().startswith(codes.QUEUED_PREFIX)


# -- greeting, EHLO, STARTTLS -----------------------------------------------------------------------

def test_ehlo_before_starttls_offers_starttls_and_no_auth(raw_client):
    client = raw_client(tls=False)
    assert client.cmd("EHLO client.example") == codes.EHLO_BEFORE_TLS


def test_ehlo_after_starttls_offers_auth(raw_client):
    client = raw_client()
    assert client.cmd("EHLO client.example") == codes.EHLO_AFTER_TLS


def test_ehlo_on_implicit_tls_offers_auth(raw_client):
    client = raw_client(port="tls")
    assert client.cmd("EHLO client.example") == codes.EHLO_AFTER_TLS


@pytest.mark.parametrize("command", [f"AUTH PLAIN {b64(chr(0) + 'a@b.c' + chr(0) + 'x')}", f"MAIL FROM:<{SENDER}>",
                                     "RCPT TO:<a@example.com>", "DATA"])
def test_transaction_commands_before_starttls_refused(raw_client, command):
    client = raw_client(tls=False)
    client.cmd("EHLO client.example")
    assert client.cmd(command) == codes.TLS_REQUIRED


def test_mail_before_auth_refused(raw_client):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == codes.AUTH_REQUIRED


@pytest.mark.parametrize("port", ["starttls", "tls"])
def test_starttls_inside_tls_refused(raw_client, port):
    client = raw_client(port=port)
    client.cmd("EHLO client.example")
    assert client.cmd("STARTTLS") == codes.TLS_ACTIVE


def test_starttls_pipelined_commands_discarded(raw_client, discard_smtp):
    client = raw_client(tls=False)
    client.cmd("EHLO client.example")
    # Injected in clear text behind STARTTLS: must not be answered after the handshake (RFC 3207).
    client.send("STARTTLS\r\nHELP\r\nEHLO injected\r\n")
    assert client.reply() == codes.READY_FOR_TLS
    client.sock = tls_context(discard_smtp.cafile).wrap_socket(client.sock, server_hostname=discard_smtp.host)
    client.buf = b""
    assert client.cmd("NOOP") == codes.OK
    # EHLO knowledge from before TLS is gone too.
    assert client.cmd("AUTH PLAIN " + b64(f"\0{SENDER}\0{discard_smtp.password}")) == codes.EHLO_FIRST


def test_starttls_forgets_pre_tls_ehlo(raw_client):
    client = raw_client()  # STARTTLS done after an implicit greeting, no EHLO since
    assert client.cmd(f"AUTH PLAIN {b64(chr(0) + SENDER + chr(0) + 'x')}") == codes.EHLO_FIRST


def test_plaintext_on_implicit_tls_port_is_dropped_and_server_keeps_serving(discard_smtp, raw_client):
    import socket

    with socket.create_connection((discard_smtp.host, discard_smtp.tls_port), timeout=10) as sock:
        sock.sendall(b"EHLO plain\r\n")
        try:
            answer = sock.recv(100)
        except ConnectionResetError:  # closed with our bytes unread: the kernel resets
            answer = b""
        assert answer == b""  # the TLS handshake failed; nothing was answered in clear text
    assert_still_serving(raw_client)


# -- AUTH -------------------------------------------------------------------------------------------

def test_auth_plain_initial_response_accepted(raw_client, discard_smtp):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd("AUTH PLAIN " + b64(f"\0{SENDER}\0{discard_smtp.password}")) == codes.AUTH_OK


def test_auth_plain_continuation_accepted(raw_client, discard_smtp):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd("AUTH PLAIN") == codes.PLAIN_CHALLENGE
    assert client.cmd(b64(f"{SENDER}\0{SENDER}\0{discard_smtp.password}")) == codes.AUTH_OK


def test_auth_login_continuation_accepted(raw_client, discard_smtp):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd("AUTH LOGIN") == codes.LOGIN_USERNAME
    assert client.cmd(b64(SENDER)) == codes.LOGIN_PASSWORD
    assert client.cmd(b64(discard_smtp.password)) == codes.AUTH_OK


def test_auth_login_initial_response_accepted(raw_client, discard_smtp):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd("AUTH LOGIN " + b64(SENDER.upper())) == codes.LOGIN_PASSWORD
    assert client.cmd(b64(discard_smtp.password)) == codes.AUTH_OK


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_cancelled_with_star(raw_client, mechanism):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd(f"AUTH {mechanism}").startswith("334 ")
    assert client.cmd("*") == codes.AUTH_CANCELLED
    assert client.cmd("NOOP") == codes.OK


@pytest.mark.parametrize("response", ["not base64!", "YWJj=ZGVm", "YWJjAHg="])  # last: only two fields
def test_auth_plain_undecodable_response_refused(raw_client, response):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd(f"AUTH PLAIN {response}") == codes.AUTH_UNDECODABLE


def test_auth_empty_initial_response_is_empty_credentials(raw_client):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd("AUTH PLAIN =") == codes.AUTH_UNDECODABLE


def test_auth_wrong_password_refused(raw_client):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd("AUTH PLAIN " + b64(f"\0{SENDER}\0il_wrong")) == codes.AUTH_FAILED


def test_auth_as_other_authzid_refused(raw_client, discard_smtp):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd("AUTH PLAIN " + b64(f"boss@inboxlayer.dev\0{SENDER}\0{discard_smtp.password}")) \
        == codes.AUTH_FAILED


def test_auth_unknown_mechanism_refused(raw_client):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd("AUTH CRAM-MD5") == codes.UNKNOWN_MECHANISM


def test_auth_twice_refused(raw_client, discard_smtp):
    client = raw_client(login=True)
    assert client.cmd("AUTH PLAIN " + b64(f"\0{SENDER}\0{discard_smtp.password}")) == codes.ALREADY_AUTHENTICATED


def test_auth_response_line_over_12288_refused(raw_client):
    client = raw_client()
    client.cmd("EHLO client.example")
    assert client.cmd("AUTH PLAIN") == codes.PLAIN_CHALLENGE
    assert client.cmd("A" * 13000) == codes.LINE_TOO_LONG
    assert client.cmd("NOOP") == codes.OK


# -- MAIL, RCPT --------------------------------------------------------------------------------------

def test_mail_from_other_address_refused(raw_client):
    client = raw_client(login=True)
    assert client.cmd("MAIL FROM:<boss@inboxlayer.dev>") == codes.SENDER_NOT_OWNED


def test_mail_from_plus_tag_and_case_accepted(raw_client):
    client = raw_client(login=True)
    assert client.cmd("MAIL FROM:<Agent+News@InboxLayer.DEV>") == codes.SENDER_OK


def test_mail_null_sender_refused(raw_client):
    client = raw_client(login=True)
    assert client.cmd("MAIL FROM:<>") == codes.SENDER_NOT_OWNED


@pytest.mark.parametrize("command, reply", [
    (f"MAIL FROM:<{SENDER}> SIZE=26214401", codes.SIZE_EXCEEDED),
    (f"MAIL FROM:<{SENDER}> SIZE=26214400", codes.SENDER_OK),
    (f"MAIL FROM:<{SENDER}> SIZE=abc", codes.BAD_SIZE),
    (f"MAIL FROM:<{SENDER}> BODY=8BITMIME SMTPUTF8", codes.SENDER_OK),
    (f"MAIL FROM:<{SENDER}> BODY=BINARYMIME", codes.BAD_BODY),
    (f"MAIL FROM:<{SENDER}> AUTH=<>", codes.SENDER_OK),
    (f"MAIL FROM:<{SENDER}> RET=HDRS", codes.UNKNOWN_PARAMETER),
    (f"MAIL FROM:{SENDER}", codes.SYNTAX_MAIL),
    (f"MAIL FROM:<{SENDER}", codes.SYNTAX_MAIL),
    ("MAIL TO:<a@example.com>", codes.SYNTAX_MAIL),
    ("MAIL FROM:<agent@@inboxlayer.dev>", codes.BAD_SENDER),
    ("MAIL FROM:<agënt@inboxlayer.dev>", codes.NEEDS_SMTPUTF8),
    (f"MAIL FROM: <{SENDER}>", codes.SENDER_OK),
])
def test_mail_parameters(raw_client, command, reply):
    client = raw_client(login=True)
    assert client.cmd(command) == reply


def test_mail_nested_refused(raw_client):
    client = raw_client(login=True)
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == codes.SENDER_OK
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == codes.NESTED_MAIL


@pytest.mark.parametrize("recipient, reply", [
    ("<a@example.com>", codes.RECIPIENT_OK),
    ("<\"odd person\"@example.com>", codes.RECIPIENT_OK),
    ("<@relay.example:a@example.com>", codes.RECIPIENT_OK),
    ("<a@[192.0.2.1]>", codes.RECIPIENT_OK),
    ("<a@[300.0.0.1]>", codes.BAD_RECIPIENT),
    ("<a@example.com> NOTIFY=NEVER", codes.UNKNOWN_PARAMETER),
    ("<postmaster>", codes.BAD_RECIPIENT),
    ("<>", codes.BAD_RECIPIENT),
    ("<a b@example.com>", codes.BAD_RECIPIENT),
    ("<a@exa_mple.com>", codes.BAD_RECIPIENT),
    ("<josé@example.com>", codes.NEEDS_SMTPUTF8),
    ("a@example.com", codes.SYNTAX_RCPT),
])
def test_rcpt_address_syntax(raw_client, recipient, reply):
    client = raw_client(login=True)
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == codes.SENDER_OK
    assert client.cmd(f"RCPT TO:{recipient}") == reply


def test_rcpt_non_ascii_accepted_with_smtputf8(raw_client):
    client = raw_client(login=True)
    assert client.cmd(f"MAIL FROM:<{SENDER}> SMTPUTF8") == codes.SENDER_OK
    assert client.cmd("RCPT TO:<josé@exämple.com>") == codes.RECIPIENT_OK


def test_rcpt_before_mail_refused(raw_client):
    client = raw_client(login=True)
    assert client.cmd("RCPT TO:<a@example.com>") == codes.MAIL_FIRST


def test_rcpt_1000_recipients_capped_at_100(raw_client, discard_smtp):
    client = raw_client(login=True)
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == codes.SENDER_OK
    client.send("".join(f"RCPT TO:<r{i}@example.com>\r\n" for i in range(1000)))
    replies = [client.reply() for _ in range(1000)]
    assert replies[:100] == [codes.RECIPIENT_OK] * 100
    assert replies[100:] == [codes.TOO_MANY_RECIPIENTS] * 900
    assert client.cmd("DATA") == codes.START_DATA
    client.send(HEADERS + "to a hundred\r\n.\r\n")
    assert client.reply().startswith(codes.QUEUED_PREFIX)


def test_data_without_recipients_refused(raw_client):
    client = raw_client(login=True)
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == codes.SENDER_OK
    assert client.cmd("DATA") == codes.NO_RECIPIENTS
    assert client.cmd("DATA") == codes.NO_RECIPIENTS


def test_data_before_mail_refused(raw_client):
    client = raw_client(login=True)
    assert client.cmd("DATA") == codes.MAIL_FIRST


# -- other commands ------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, reply", [
    ("NOOP", codes.OK), ("NOOP anything", codes.OK), ("RSET", codes.OK), ("RSET x", codes.SYNTAX_NO_ARGS),
    ("VRFY someone", codes.CANNOT_VRFY), ("HELP", codes.HELP), ("EXPN staff", codes.NOT_IMPLEMENTED),
    ("BDAT 10 LAST", codes.NOT_IMPLEMENTED), ("XYZZY", codes.UNRECOGNIZED), ("EHLO", codes.SYNTAX_EHLO),
    ("noop", codes.OK), ("STARTTLS now", codes.SYNTAX_NO_ARGS),
])
def test_simple_commands(raw_client, command, reply):
    client = raw_client()
    assert client.cmd(command) == reply


def test_rset_ends_transaction(raw_client):
    client = raw_client(login=True)
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == codes.SENDER_OK
    assert client.cmd("RSET") == codes.OK
    assert client.cmd("RCPT TO:<a@example.com>") == codes.MAIL_FIRST
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == codes.SENDER_OK


def test_quit_closes(raw_client):
    client = raw_client()
    assert client.cmd("QUIT") == codes.BYE
    assert client.is_closed()


def test_http_request_closed_at_once(raw_client):
    client = raw_client(tls=False)
    client.send("POST / HTTP/1.1\r\nHost: x\r\n\r\nMAIL FROM:<a@b.c>\r\n")
    assert client.reply() == codes.NOT_SMTP
    assert client.is_closed()


# -- pipelining -------------------------------------------------------------------------------------

def test_pipelined_transaction_replies_in_order(raw_client, discard_smtp):
    client = raw_client(login=True)
    client.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<bad address>\r\n"
                "RCPT TO:<b@example.com>\r\nNOOP\r\nDATA\r\n")
    assert [client.reply() for _ in range(6)] == [codes.SENDER_OK, codes.RECIPIENT_OK, codes.BAD_RECIPIENT,
                                                  codes.RECIPIENT_OK, codes.OK, codes.START_DATA]
    client.send(HEADERS + "pipelined\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")
    reply = client.reply()
    assert captured(discard_smtp, reply) == HEADERS.encode() + b"pipelined\r\n"
    assert [client.reply() for _ in range(3)] == [codes.OK, codes.OK, codes.BYE]


def test_two_messages_in_one_pipelined_write(raw_client, discard_smtp):
    client = raw_client(login=True)
    one = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n{HEADERS}first\r\n.\r\n"
    client.send(one + one.replace("first", "second"))
    replies = [client.reply() for _ in range(8)]
    assert replies[:3] == [codes.SENDER_OK, codes.RECIPIENT_OK, codes.START_DATA]
    assert replies[4:7] == [codes.SENDER_OK, codes.RECIPIENT_OK, codes.START_DATA]
    assert captured(discard_smtp, replies[3]).endswith(b"\r\n\r\nfirst\r\n")
    assert captured(discard_smtp, replies[7]).endswith(b"\r\n\r\nsecond\r\n")


# -- DATA: transparency and smuggling ------------------------------------------------------------------

def test_data_dot_unstuffing(raw_client, discard_smtp):
    client = raw_client(login=True)
    start_transaction(client)
    client.send(HEADERS + "..leading dot\r\n...\r\n..\r\n.x\r\nend\r\n.\r\n")
    stored = captured(discard_smtp, client.reply())
    assert stored == HEADERS.encode() + b".leading dot\r\n..\r\n.\r\nx\r\nend\r\n"


def test_data_bare_lf_normalised_and_bare_cr_kept(raw_client, discard_smtp):
    client = raw_client(login=True)
    start_transaction(client)
    client.send(HEADERS.replace("\r\n", "\n") + "one\ntwo\rthree\r\n.\r\n")
    stored = captured(discard_smtp, client.reply())
    assert stored == HEADERS.encode() + b"one\r\ntwo\rthree\r\n"


def test_data_empty_message_passes_to_backend(raw_client, discard_smtp):
    client = raw_client(login=True)
    start_transaction(client)
    client.send(".\r\n")
    assert captured(discard_smtp, client.reply()) == b""


SMUGGLED = (f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
            f"From: {SENDER}\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")


@pytest.mark.parametrize("end", ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r", "\n..\r\n"])
def test_data_smuggling_variant_does_not_split_message(raw_client, discard_smtp, end):
    client = raw_client(login=True)
    start_transaction(client)
    client.send(HEADERS + "body" + end + SMUGGLED + ".\r\n")
    reply = client.reply()
    stored = captured(discard_smtp, reply)
    assert b"Subject: smuggled" in stored and b"victim@example.com" in stored
    # Exactly one message: the next reply is to our NOOP, not to a smuggled MAIL.
    assert client.cmd("NOOP") == codes.OK


def test_data_smuggling_variant_with_real_end_in_separate_write(raw_client, discard_smtp):
    client = raw_client(login=True)
    start_transaction(client)
    client.send(HEADERS + "body\n.\n")
    client.send(SMUGGLED)
    client.send("\r\n.\r\n")
    stored = captured(discard_smtp, client.reply())
    assert stored.count(b"Subject:") == 2
    assert client.cmd("NOOP") == codes.OK


def test_data_end_split_across_writes(raw_client, discard_smtp):
    client = raw_client(login=True)
    start_transaction(client)
    for piece in [HEADERS + "split", "\r", "\n", ".", "\r", "\nNOOP\r\n"]:
        client.send(piece)
    assert captured(discard_smtp, client.reply()) == HEADERS.encode() + b"split\r\n"
    assert client.reply() == codes.OK


# -- abuse: long lines, NUL, errors ------------------------------------------------------------------

def test_command_line_2000_characters_refused(raw_client):
    client = raw_client(login=True)
    assert client.cmd("MAIL FROM:<" + "a" * 2000 + "@example.com>") == codes.LINE_TOO_LONG
    assert client.cmd("NOOP") == codes.OK
    assert_still_serving(raw_client)


def test_command_line_at_512_accepted(raw_client):
    client = raw_client()
    line = "NOOP " + "x" * (512 - 2 - 5)
    assert client.cmd(line) == codes.OK
    assert client.cmd(line + "x") == codes.LINE_TOO_LONG


def test_command_line_without_end_over_limit_refused(raw_client):
    client = raw_client()
    client.send("NOOP " + "x" * 100_000)
    client.send("\r\nNOOP\r\n")
    assert client.reply() == codes.LINE_TOO_LONG
    assert client.reply() == codes.OK


@pytest.mark.parametrize("line", [b"NO\x00OP", b"NOOP\x00", b"MAIL FROM:<a\x00@b.c>", b"NOOP\rRSET", b"NOOP \xff\xfe"])
def test_command_with_nul_cr_or_bad_utf8_refused(raw_client, line):
    client = raw_client(login=True)
    client.send(line + b"\r\n")
    assert client.reply() == codes.BAD_COMMAND_BYTES
    assert client.cmd("NOOP") == codes.OK


def test_data_with_nul_refused_after_end_of_data(raw_client):
    client = raw_client(login=True)
    start_transaction(client)
    client.send(HEADERS + "nul \x00 here\r\nmore\r\n.\r\n")
    assert client.reply() == codes.NUL_IN_DATA
    assert client.cmd("NOOP") == codes.OK


def test_data_line_of_64k_accepted(raw_client, discard_smtp):
    client = raw_client(login=True)
    start_transaction(client)
    long_line = "x" * (65536 - 2)
    client.send(HEADERS + long_line + "\r\n.\r\n")
    assert captured(discard_smtp, client.reply()).endswith(long_line.encode() + b"\r\n")


def test_data_line_over_64k_refused_after_end_of_data(raw_client):
    client = raw_client(login=True)
    start_transaction(client)
    client.send(HEADERS + "x" * (65536 - 1) + "\r\nafter\r\n.\r\nNOOP\r\n")
    assert client.reply() == codes.LINE_TOO_LONG
    assert client.reply() == codes.OK


def test_data_endless_line_refused_after_end_of_data(raw_client):
    client = raw_client(login=True)
    start_transaction(client)
    client.send(HEADERS)
    for _ in range(20):
        client.send("y" * 100_000)
    client.send("\r\n.\r\n")
    assert client.reply() == codes.LINE_TOO_LONG
    assert client.cmd("NOOP") == codes.OK


def test_bad_command_budget_closes_connection(raw_client):
    client = raw_client()
    replies = [client.cmd("XYZZY") for _ in range(21)]
    assert replies == [codes.UNRECOGNIZED] * 21
    assert client.reply() == codes.TOO_MANY_ERRORS
    assert client.is_closed()
    assert_still_serving(raw_client)


# -- size ---------------------------------------------------------------------------------------------

def big_message(total):
    """A message of exactly ``total`` bytes as stored (CRLF lines of 1000 octets)."""
    head = HEADERS.encode()
    body_size = total - len(head)
    full_lines = (body_size - 2) // 1000
    last = body_size - full_lines * 1000
    message = head + (b"z" * 998 + b"\r\n") * full_lines + b"q" * (last - 2) + b"\r\n"
    assert len(message) == total
    return message


def vm_rss_kb(pid):
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def test_data_25mb_accepted(raw_client, discard_smtp):
    client = raw_client(login=True)
    start_transaction(client)
    message = big_message(26214400)
    client.send(message + b".\r\n")
    stored_path = discard_smtp.capture_dir / f"{queued_id(client.reply())}.eml"
    assert stored_path.stat().st_size == 26214400
    stored_path.unlink()


def test_data_25mb_plus_one_refused_without_buffering(raw_client, discard_smtp):
    client = raw_client(login=True)
    start_transaction(client)
    before = vm_rss_kb(discard_smtp.proc.pid)
    client.send(big_message(26214401) + b".\r\nNOOP\r\n")
    assert client.reply() == codes.SIZE_EXCEEDED
    assert client.reply() == codes.OK
    grown_kb = vm_rss_kb(discard_smtp.proc.pid) - before
    assert grown_kb < 10 * 1024, f"server RSS grew by {grown_kb} KB for a refused 25 MB message"


# -- per-connection budgets: a server with a 1 s idle timeout and 30 commands per connection -----------

@pytest.fixture(scope="module")
def strict_smtp(tmp_path_factory):
    server = start_discard_server(tmp_path_factory.mktemp("strict-smtp"), INBOXLAYER_SMTP_IDLE_TIMEOUT=1,
                                  INBOXLAYER_SMTP_MAX_COMMANDS=30)
    yield server
    stop_server(server.proc)


def test_idle_client_gets_421_and_others_are_served(strict_smtp, raw_client):
    idle = raw_client(server=strict_smtp, tls=False)
    busy = raw_client(server=strict_smtp, login=True)
    assert busy.cmd("NOOP") == codes.OK
    assert idle.reply() == codes.IDLE_TIMEOUT  # blocks until the server gives up on us
    assert idle.is_closed()
    assert busy.cmd(f"MAIL FROM:<{SENDER}>") == codes.SENDER_OK


def test_idle_client_in_data_gets_421_and_nothing_is_accepted(strict_smtp, raw_client):
    client = raw_client(server=strict_smtp, login=True)
    start_transaction(client)
    client.send(HEADERS + "half a message")
    assert client.reply() == codes.IDLE_TIMEOUT
    assert client.is_closed()


def test_idle_client_in_tls_handshake_is_dropped(strict_smtp):
    import socket

    with socket.create_connection((strict_smtp.host, strict_smtp.tls_port), timeout=10) as sock:
        assert sock.recv(100) == b""  # no ClientHello from us: closed after the timeout, silently


def test_command_budget_closes_connection(strict_smtp, raw_client):
    client = raw_client(server=strict_smtp, tls=False)
    client.send("NOOP\r\n" * 31)
    assert [client.reply() for _ in range(30)] == [codes.OK] * 30
    assert client.reply() == codes.TOO_MANY_COMMANDS
    assert client.is_closed()


def test_pipelined_burst_of_commands_answered_in_order(raw_client):
    client = raw_client(login=True)
    client.send("NOOP\r\n" * 5000 + f"MAIL FROM:<{SENDER}>\r\n")
    assert [client.reply() for _ in range(5000)] == [codes.OK] * 5000
    assert client.reply() == codes.SENDER_OK


def test_starttls_with_garbage_instead_of_handshake_closes_silently(raw_client):
    client = raw_client(tls=False)
    assert client.cmd("STARTTLS") == codes.READY_FOR_TLS
    client.send("EHLO not-tls\r\n")
    try:
        answer = client.sock.recv(100)
    except ConnectionResetError:
        answer = b""
    assert answer[:1] in (b"", b"\x15")  # nothing in clear text: EOF or a TLS alert record
    assert_still_serving(raw_client)
