"""The IMAP process in operation: its ops port (/readyz, /healthz, /metrics), a graceful SIGTERM,
and blob reads off the event loop (a stuck read stalls one session, not all)."""
import os
import signal
import threading
import time

import requests

import models
from tests.fixtures_imap import ImapRaw
from tests.helpers import free_port
from tests.helpers import wait_until


def login(client, account, tag="a"):
    client.send(f"{tag} LOGIN {account.address} {account.token}\r\n")
    assert client.expect_tagged(tag)[-1].startswith(f"{tag} OK")


def test_imap_readyz_reports_listening_database_and_blobs(account, start_imap_server):
    port = free_port()
    server = start_imap_server(INBOXLAYER_METRICS_IMAP_PORT=port)
    base = f"http://127.0.0.1:{port}"
    response, = wait_until(lambda: _get(f"{base}/readyz"), what="imapd ops port")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"listening": {"ok": True}, "database": {"ok": True},
                                                             "blobs": {"ok": True}}}
    assert requests.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
    client = ImapRaw(server)
    login(client, account)
    metrics = requests.get(f"{base}/metrics", timeout=10).text
    assert "inboxlayer_imap_active_sessions 1.0" in metrics
    assert 'inboxlayer_imap_sessions_total{listener="tls"} 1.0' in metrics
    assert requests.get(f"{base}/nothing", timeout=10).status_code == 404


def test_imap_readyz_is_503_when_the_blob_store_is_gone(account, start_imap_server, tmp_path):
    port = free_port()
    not_a_directory = tmp_path / "blobs-file"
    not_a_directory.write_text("")
    start_imap_server(INBOXLAYER_METRICS_IMAP_PORT=port, INBOXLAYER_BLOBS_PATH=not_a_directory)
    response, = wait_until(lambda: _get(f"http://127.0.0.1:{port}/readyz"), what="imapd ops port")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"listening": {"ok": True},
                                                                   "database": {"ok": True},
                                                                   "blobs": {"ok": False}}}


def _get(url):
    """The response once something answers on the port (a list: a 503 response is falsy)."""
    try:
        return [requests.get(url, timeout=10)]
    except requests.ConnectionError:
        return None


def test_imap_sigterm_says_bye_to_open_sessions_and_exits_promptly(account, start_imap_server):
    port = free_port()
    server = start_imap_server(INBOXLAYER_METRICS_IMAP_PORT=port)
    waiting = ImapRaw(server)  # logged in, a folder selected, waiting for a command
    login(waiting, account)
    waiting.send("s SELECT Sent\r\n")
    waiting.expect_tagged("s")
    idling = ImapRaw(server)  # in IDLE
    login(idling, account)
    idling.send("s SELECT Sent\r\nc IDLE\r\n")
    idling.expect_tagged("s")
    assert idling.line() == "+ idling\r\n"
    anonymous = ImapRaw(server)  # connected, not logged in
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for client in (waiting, idling, anonymous):
        assert client.line() == "* BYE Server shutting down; reconnect\r\n"
        assert client.line() == ""  # and the connection is closed
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 5


def test_imap_a_stuck_blob_read_stalls_only_its_own_session(account, imap_server, config):
    """A message whose stored file is a FIFO nobody writes: opening it blocks (like a hung disk or
    network file system). The session fetching it waits on gevent's thread pool; another session
    is served meanwhile. Were the read on the event loop, the NOOP below would not be answered
    until the FIFO got a writer."""
    blob_key = f"stuck/{account.inbox.id}.eml"
    fifo = os.path.join(config["blobs"]["path"], blob_key)
    os.makedirs(os.path.dirname(fifo), exist_ok=True)
    os.mkfifo(fifo)
    with models.db.connection_context(), models.db.atomic():
        uid = models.next_imap_uid(account.inbox.id)
        models.Message.insert(inbox=account.inbox.id, folder="sent", message_id="<stuck@x>", size=100,
                              blob_key=blob_key, imap_uid=uid).execute()
    stuck = ImapRaw(imap_server)
    login(stuck, account)
    stuck.send("s SELECT Sent\r\n")
    stuck.expect_tagged("s")
    stuck.send(f"f UID FETCH {uid} (BODY.PEEK[])\r\n")
    other = ImapRaw(imap_server)
    try:
        login(other, account, tag="o")  # a database query and a token check, all while the read hangs
        started = time.monotonic()
        other.send("n NOOP\r\n")
        assert other.expect_tagged("n") == ["n OK NOOP completed\r\n"]
        assert time.monotonic() - started < 2
    finally:
        # Give the FIFO a writer (and EOF) so the stuck thread returns.
        opener = threading.Thread(target=lambda: os.close(os.open(fifo, os.O_WRONLY)))
        opener.start()
        opener.join(10)
    stuck.close()
    assert imap_server.proc.poll() is None
