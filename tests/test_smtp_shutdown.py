"""Graceful shutdown of the real server on SIGTERM: stop accepting, 421 to idle sessions, let a
session in DATA finish with its 250, then exit cleanly."""
import signal
import socket

from tests import smtp_codes as codes
from tests.fixtures_smtp import RawClient
from tests.fixtures_smtp import message
from tests.helpers import wait_until


def logged_in(server, account):
    client = RawClient(server)
    assert client.authenticate(account.address, account.token).startswith("220 ")
    return client


def refuses_connections(server):
    try:
        socket.create_connection((server.host, server.starttls_port), timeout=1).close()
    except OSError:
        return True
    return False


def in_data_at_sigterm(server, account):
    """A session halfway through DATA when the server gets SIGTERM; returns it and the rest of
    its message, once the listeners are closed."""
    busy = logged_in(server, account)
    busy.start_data(account.address)
    data = message(account.address)
    busy.send(data[:20])
    server.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: refuses_connections(server), timeout=10, what="listeners closed")
    return busy, data[20:] + b".\r\n"


def test_sigterm_lets_data_finish_and_421s_idle_sessions(smtp_server, account):
    idle = logged_in(smtp_server, account)
    busy, rest = in_data_at_sigterm(smtp_server, account)
    assert idle.reply() == codes.SHUTTING_DOWN
    assert idle.is_closed()

    busy.send(rest)
    assert busy.reply().startswith(codes.QUEUED_PREFIX)
    assert busy.reply() == codes.SHUTTING_DOWN
    assert busy.is_closed()
    assert smtp_server.proc.wait(timeout=20) == 0


def test_sigterm_still_answers_the_quit_after_a_250(smtp_server, account):
    """A client whose QUIT after its 250 got a 421 might think the message was lost and resend it."""
    busy, rest = in_data_at_sigterm(smtp_server, account)
    busy.send(rest + b"QUIT\r\n")
    assert busy.reply().startswith(codes.QUEUED_PREFIX)
    assert busy.reply() == "221 2.0.0 Bye"
    assert busy.is_closed()
    assert smtp_server.proc.wait(timeout=20) == 0


def test_sigterm_refuses_a_new_transaction_after_a_250(smtp_server, account):
    busy, rest = in_data_at_sigterm(smtp_server, account)
    busy.send(rest + f"MAIL FROM:<{account.address}>\r\n".encode())
    assert busy.reply().startswith(codes.QUEUED_PREFIX)
    assert busy.reply() == codes.SHUTTING_DOWN
    assert busy.is_closed()
