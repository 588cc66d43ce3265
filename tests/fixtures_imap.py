"""Fixtures for the IMAP tests (a pytest plugin registered in conftest.py).

- ``imap_server``: the REAL server (`python -m cli imapd`) as a child process on free ports, seeing
  this test's settings. Fields: host, starttls_port, tls_port, cafile, proc, log_path.
- ``imap_client(...)``: python's imaplib over implicit TLS (or STARTTLS), trusting only our dev
  certificate, logged in when credentials are given.
- ``ImapRaw``: a socket-level client for what imaplib will not send (hostile input, IDLE).
"""
import imaplib
import socket
import ssl
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.fixtures_smtp import _start
from tests.fixtures_smtp import stop_server
from tests.fixtures_smtp import tls_context
from tests.helpers import free_port

HOST = "127.0.0.1"


@pytest.fixture
def start_imap_server(config, subprocess_env, tmp_path):
    procs = []

    def start(**env):
        starttls_port, tls_port = free_port(), free_port()
        child_env = dict(subprocess_env, INBOXLAYER_IMAP_HOST=HOST, INBOXLAYER_IMAP_STARTTLS_PORT=str(starttls_port),
                         INBOXLAYER_IMAP_TLS_PORT=str(tls_port), INBOXLAYER_IMAP_IDLE_POLL="0.2")
        child_env.update({k: str(v) for k, v in env.items()})
        log_path = tmp_path / f"imapd-{len(procs)}.log"
        proc = _start([sys.executable, "-m", "cli", "imapd"], child_env, log_path, (starttls_port, tls_port))
        procs.append(proc)
        data_dir = Path(config["server"]["data_dir"])
        return SimpleNamespace(host=HOST, starttls_port=starttls_port, tls_port=tls_port, proc=proc,
                               log_path=log_path, cafile=data_dir / "tls" / "smtp-cert.pem")

    yield start
    for proc in procs:
        stop_server(proc)


@pytest.fixture
def imap_server(start_imap_server):
    return start_imap_server()


@pytest.fixture
def imap_client(imap_server):
    clients = []

    def connect(username=None, password=None, port="tls"):
        context = tls_context(imap_server.cafile)
        if port == "tls":
            client = imaplib.IMAP4_SSL(imap_server.host, imap_server.tls_port, ssl_context=context, timeout=60)
        else:
            client = imaplib.IMAP4(imap_server.host, imap_server.starttls_port, timeout=60)
            client.starttls(ssl_context=context)
        clients.append(client)
        if username is not None:
            client.login(username, password)
        return client

    yield connect
    for client in clients:
        try:
            client.shutdown()
        except (OSError, imaplib.IMAP4.error):
            pass


class ImapRaw:
    """Lines in, lines out, over implicit TLS; ``expect_tagged`` reads up to the tagged reply."""

    def __init__(self, server, timeout=20):
        raw = socket.create_connection((server.host, server.tls_port), timeout=timeout)
        self.sock = tls_context(server.cafile).wrap_socket(raw, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def line(self):
        return self.file.readline(1 << 20).decode("utf-8", "replace")

    def expect_tagged(self, tag):
        lines = []
        while True:
            line = self.line()
            if not line:
                raise ConnectionError("closed; got " + repr(lines))
            lines.append(line)
            if line.startswith(tag + " ") or line.startswith("* BYE"):
                return lines

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def imap_raw(imap_server):
    opened = []

    def connect():
        client = ImapRaw(imap_server)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()
