"""Connection-level limits over real sockets against the real server processes: the per-address
connection cap, the absolute deadlines (pre-AUTH, per command line, TLS handshake), the minimum
DATA rate, the per-account cap on DATA uploads in progress, and a token revoked during DATA.

The trickling clients pace themselves with select() timeouts (that is the attack, one byte every
half second); every wait for the server has a deadline and fails the test when it passes.
"""
import select
import socket
import ssl
import threading
import time

import pytest

import models
from core import accounts
from core import recipients
from smtpd_worker.server import client_key
from tests import smtp_codes as codes
from tests.fixtures_smtp import RawClient
from tests.fixtures_smtp import message
from tests.fixtures_smtp import start_discard_server
from tests.fixtures_smtp import stop_server
from tests.fixtures_smtp import tls_context
from tests.helpers import wait_until

SENDER = "agent@inboxlayer.dev"
HEADERS = f"From: {SENDER}\r\nTo: a@example.com\r\nSubject: t\r\n\r\n"
GREETING = "220 localhost ESMTP Inboxlayer"
TRICKLE = 0.5  # seconds between the bytes of a trickling client


def logged_in(server, username=SENDER, password=None, source=None):
    client = RawClient(server, source=source)
    assert client.authenticate(username, password or server.password) == GREETING
    return client


def readable_within(sock, seconds):
    return bool(select.select([sock], [], [], seconds)[0])


def trickle_until_answered(client, piece, limit):
    """Send ``piece`` every TRICKLE seconds until the server says something (or closes);
    (reply, seconds). Fails if the server lets it go on for ``limit`` seconds."""
    started = time.monotonic()
    while not readable_within(client.sock, TRICKLE):
        assert time.monotonic() - started < limit, f"still trickling after {limit}s: never cut"
        client.send(piece)
    return client.reply(), time.monotonic() - started


# -- the per-address connection cap (defaults: 50 per address) ---------------------------------------

@pytest.fixture(scope="module")
def cap_smtp(tmp_path_factory):
    server = start_discard_server(tmp_path_factory.mktemp("cap-smtp"))
    yield server
    stop_server(server.proc)


def test_connections_from_one_address_capped_at_50_others_still_served(cap_smtp):
    clients = [RawClient(cap_smtp) for _ in range(80)]
    stop = threading.Event()

    def trickle():  # the 50 that got in hold their slots, one byte at a time
        while not stop.wait(TRICKLE):
            for client in clients[:50]:
                client.send(b"N")

    trickler = threading.Thread(target=trickle, daemon=True)
    try:
        greetings = [client.reply() for client in clients]
        assert greetings == [GREETING] * 50 + [codes.TOO_MANY_CONNECTIONS] * 30
        assert all(client.is_closed() for client in clients[50:])
        trickler.start()
        # Another address is not delayed: a whole transaction, start to 250, in well under a second
        # normally; 5 s allows for a loaded test machine.
        started = time.monotonic()
        other = logged_in(cap_smtp, source="127.0.0.2")
        other.start_data(SENDER)
        other.send(HEADERS + "from another address\r\n.\r\n")
        assert other.reply().startswith(codes.QUEUED_PREFIX)
        assert time.monotonic() - started < 5
        other.close()
        # The cap counts both listeners: port 465 says 421 too, over TLS.
        over_tls = RawClient(cap_smtp, implicit_tls=True)
        assert over_tls.reply() == codes.TOO_MANY_CONNECTIONS
        assert over_tls.is_closed()
    finally:
        stop.set()
        if trickler.is_alive():
            trickler.join(10)
        for client in clients:
            client.close()

    def greeted_again():
        client = RawClient(cap_smtp)
        try:
            return client.reply() == GREETING
        finally:
            client.close()

    wait_until(greeted_again, timeout=10, what="the address's slots freed after its connections closed")


@pytest.mark.parametrize("ip, key", [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_client_key_counts_ipv6_by_its_64(ip, key):
    assert client_key(ip) == key


# -- deadlines: pre-AUTH 4 s, a command line 2 s once begun, DATA at least 2000 bytes/s ---------------

@pytest.fixture(scope="module")
def deadline_smtp(tmp_path_factory):
    server = start_discard_server(tmp_path_factory.mktemp("deadline-smtp"), INBOXLAYER_SMTP_IDLE_TIMEOUT=10,
                                  INBOXLAYER_SMTP_PRE_AUTH_DEADLINE=4, INBOXLAYER_SMTP_COMMAND_DEADLINE=2,
                                  INBOXLAYER_SMTP_DATA_MIN_RATE=2000)
    yield server
    stop_server(server.proc)


def test_command_line_trickled_a_byte_at_a_time_cut_at_its_deadline(deadline_smtp):
    client = RawClient(deadline_smtp)
    assert client.reply() == GREETING
    reply, seconds = trickle_until_answered(client, b"N", limit=9)  # idle timeout 10 s: never reached
    assert reply == codes.LINE_TIMEOUT
    assert client.is_closed()
    assert 1.5 < seconds < 4


def test_complete_commands_without_auth_cut_at_pre_auth_deadline(deadline_smtp):
    client = RawClient(deadline_smtp)
    started = time.monotonic()
    assert client.reply() == GREETING
    replies = []
    while time.monotonic() - started < 9:
        if readable_within(client.sock, TRICKLE):  # pace: one NOOP every half second
            replies.append(client.reply())  # unasked: the server is closing on us
            break
        replies.append(client.cmd("NOOP"))
        if replies[-1] != codes.OK:
            break
    assert replies[-1] == codes.PRE_AUTH_TIMEOUT
    assert set(replies[:-1]) == {codes.OK}
    assert client.is_closed()
    assert 3.5 < time.monotonic() - started < 6


def test_authenticated_session_outlives_pre_auth_deadline(deadline_smtp):
    client = logged_in(deadline_smtp)
    started = time.monotonic()
    while time.monotonic() - started < 5:  # past the 4 s pre-AUTH deadline
        assert not readable_within(client.sock, 2 * TRICKLE)  # nothing unasked, no 421
        assert client.cmd("NOOP") == codes.OK
    client.start_data(SENDER)
    client.send(HEADERS + "still welcome\r\n.\r\n")
    assert client.reply().startswith(codes.QUEUED_PREFIX)


@pytest.mark.parametrize("port", ["tls", "starttls"])
def test_tls_handshake_trickled_cut_at_pre_auth_deadline(deadline_smtp, port):
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_context(deadline_smtp.cafile).wrap_bio(incoming, outgoing, server_hostname=deadline_smtp.host)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    port_number = deadline_smtp.tls_port if port == "tls" else deadline_smtp.starttls_port
    with socket.create_connection((deadline_smtp.host, port_number), timeout=10) as sock:
        started = time.monotonic()
        if port == "starttls":
            reader = sock.makefile("rb")
            assert reader.readline() == f"{GREETING}\r\n".encode()
            sock.sendall(b"STARTTLS\r\n")
            assert reader.readline() == f"{codes.READY_FOR_TLS}\r\n".encode()
        for byte in hello[:-1]:  # never the last byte: the handshake never completes
            if readable_within(sock, TRICKLE):
                break
            sock.sendall(bytes([byte]))
            assert time.monotonic() - started < 9, "trickled handshake never cut"
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed, silently: nothing can be said in the middle of a handshake
        assert 3.5 < time.monotonic() - started < 6


def test_data_below_minimum_rate_cut_and_nothing_accepted(deadline_smtp):
    before = set(deadline_smtp.capture_dir.iterdir())
    client = logged_in(deadline_smtp)
    client.start_data(SENDER)
    client.send(HEADERS)
    reply, seconds = trickle_until_answered(client, b"slow body ", limit=9)  # 20 bytes/s
    assert reply == codes.DATA_TOO_SLOW
    assert client.is_closed()
    assert 1.5 < seconds < 4
    assert set(deadline_smtp.capture_dir.iterdir()) == before


def test_data_at_full_speed_accepted_under_minimum_rate(deadline_smtp):
    client = logged_in(deadline_smtp)
    client.start_data(SENDER)
    body = ("x" * 998 + "\r\n") * 3000  # 3 MB: more than the 2 s allowance buys at 2000 bytes/s
    client.send(HEADERS + body + ".\r\n")
    assert client.reply().startswith(codes.QUEUED_PREFIX)


# -- DATA uploads in progress per account ------------------------------------------------------------

def add_inbox(account, local_part):
    with models.db.connection_context(), models.db.atomic():
        return accounts.create_inbox(account.user, local_part, None, "inboxlayer.dev").address


def test_data_uploads_per_account_capped_with_451(start_smtp_server, account):
    server = start_smtp_server(INBOXLAYER_SMTP_MAX_DATA_PER_ACCOUNT=2)
    second = add_inbox(account, "second")  # same account, other inbox: counted together
    uploading = [logged_in(server, account.address, account.token), logged_in(server, second, account.token)]
    uploading[0].start_data(account.address)
    uploading[1].start_data(second)
    third = logged_in(server, account.address, account.token)
    third.send(f"MAIL FROM:<{account.address}>\r\nRCPT TO:<someone@example.com>\r\nDATA\r\n")
    assert [third.reply() for _ in range(3)] == [codes.SENDER_OK, codes.RECIPIENT_OK, codes.TOO_MANY_TRANSFERS]

    uploading[0].send(message(account.address) + b".\r\n")
    assert uploading[0].reply().startswith(codes.QUEUED_PREFIX)
    assert third.cmd("DATA") == codes.START_DATA  # the transaction is still there; a slot is free now
    third.send(message(account.address) + b".\r\n")
    assert third.reply().startswith(codes.QUEUED_PREFIX)
    uploading[1].send(message(second) + b".\r\n")
    assert uploading[1].reply().startswith(codes.QUEUED_PREFIX)


# -- a token revoked while its DATA is arriving ---------------------------------------------------------

def test_token_revoked_during_data_gets_no_250(start_smtp_server, account):
    server = start_smtp_server(INBOXLAYER_SMTP_PRE_AUTH_DEADLINE=3)
    client = logged_in(server, account.address, account.token)
    client.start_data(account.address)
    data = message(account.address)
    client.send(data[:20])
    with models.db.connection_context():
        assert accounts.revoke_token(account.user, account.token_row.id)
    client.send(data[20:] + b".\r\n")
    assert client.reply() == codes.CREDENTIALS_REVOKED
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 0
        assert models.Message.select().count() == 0
    assert client.cmd(f"MAIL FROM:<{account.address}>") == codes.AUTH_REQUIRED
    # Unauthenticated again, so the pre-AUTH deadline runs again, from the revocation.
    started = time.monotonic()
    assert readable_within(client.sock, 10)
    assert client.reply() == codes.PRE_AUTH_TIMEOUT
    assert 2 < time.monotonic() - started < 5


@pytest.mark.parametrize("first_contact", [False, True], ids=["known-recipient", "first-contact"])
def test_inbox_paused_during_data_gets_no_250(start_smtp_server, account, first_contact):
    """The commit reads the pause again: fresh at the end of DATA for a known recipient (RCPT found
    no first contact, so the commit skips its own recipient query), in that query for a first contact."""
    server = start_smtp_server()
    client = logged_in(server, account.address, account.token)
    if not first_contact:  # mail the recipient once, so RCPT finds it known
        client.start_data(account.address)
        client.send(message(account.address) + b".\r\n")
        assert client.reply().startswith(codes.QUEUED_PREFIX)
    client.start_data(account.address)
    data = message(account.address)
    client.send(data[:20])
    with models.db.connection_context():
        assert recipients.pause(account.inbox.id, "test pause")
    client.send(data[20:] + b".\r\n")
    assert client.reply() == codes.inbox_paused("test pause")
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == (0 if first_contact else 1)
