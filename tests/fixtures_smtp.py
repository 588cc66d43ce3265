"""Fixtures for the smtp tests (a pytest plugin registered in conftest.py).

- ``smtp_server``: the REAL server (`python -m cli smtpd`) as a child process on free ports,
  seeing this test's settings (database, Redis prefix, data dir). Fields: host, starttls_port,
  tls_port, cafile, proc, log_path. Other areas' tests use it; keep the name and fields stable.
- ``start_smtp_server(**env)``: the same with extra INBOXLAYER_* settings (outage tests).
- ``smtp_client(...)``: smtplib connected to ``smtp_server`` over TLS that trusts only our dev cert.
- ``discard_smtp``: one server per test session with the DiscardBackend (no database), for
  protocol-only tests; accepted messages are copied to ``capture_dir``.
- ``RawClient``: a socket-level client for what smtplib will not send.
"""
import base64
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import smtp_codes as codes
from tests.helpers import free_port
from tests.helpers import wait_for_port

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DISCARD_USER = "agent@inboxlayer.dev"
DISCARD_PASSWORD = "il_discard-test-token"
DISCARD_SERVER_CODE = ("from gevent import monkey; monkey.patch_all()\n"
                       "import sys\nfrom smtpd_worker import server\nserver.discard_main(sys.argv[1:])")


def tls_context(cafile):
    """A client context that trusts our dev certificate and nothing else."""
    return ssl.create_default_context(cafile=str(cafile))


def _start(argv, env, log_path, ports):
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=log)
    log.close()
    try:
        for port in ports:
            wait_for_port(port, HOST, timeout=30, proc=proc)
    except Exception:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"SMTP server did not start:\n{Path(log_path).read_text()[-3000:]}") from None
    return proc


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def start_smtp_server(config, subprocess_env, tmp_path):
    """Start `inboxlayer smtpd` with this test's settings plus ``env`` overrides; stopped after."""
    procs = []

    def start(**env):
        starttls_port, tls_port = free_port(), free_port()
        child_env = dict(subprocess_env, INBOXLAYER_SMTP_HOST=HOST,
                         INBOXLAYER_SMTP_STARTTLS_PORT=str(starttls_port), INBOXLAYER_SMTP_TLS_PORT=str(tls_port))
        child_env.update({k: str(v) for k, v in env.items()})
        log_path = tmp_path / f"smtpd-{len(procs)}.log"
        proc = _start([sys.executable, "-m", "cli", "smtpd"], child_env, log_path, (starttls_port, tls_port))
        procs.append(proc)
        data_dir = Path(config["server"]["data_dir"])
        return SimpleNamespace(host=HOST, starttls_port=starttls_port, tls_port=tls_port, proc=proc,
                               log_path=log_path, cafile=data_dir / "tls" / "smtp-cert.pem")

    yield start
    for proc in procs:
        stop_server(proc)


@pytest.fixture
def smtp_server(start_smtp_server):
    return start_smtp_server()


@pytest.fixture
def smtp_client(smtp_server):
    """Factory: smtp_client(username=None, password=None, port="starttls"|"tls") -> smtplib client,
    already through STARTTLS (or implicit TLS), EHLO'd and logged in when credentials are given."""
    clients = []

    def connect(username=None, password=None, port="starttls", source_address=None):
        context = tls_context(smtp_server.cafile)
        if port == "tls":
            client = smtplib.SMTP_SSL(smtp_server.host, smtp_server.tls_port, context=context, timeout=30,
                                      source_address=source_address)
        else:
            client = smtplib.SMTP(smtp_server.host, smtp_server.starttls_port, timeout=30,
                                  source_address=source_address)
            client.starttls(context=context)
        clients.append(client)
        client.ehlo()
        if username is not None:
            client.login(username, password)
        return client

    yield connect
    for client in clients:
        try:
            client.close()
        except OSError:
            pass


@pytest.fixture(scope="session")
def discard_smtp(tmp_path_factory):
    """A protocol-only server (DiscardBackend), shared by the session; no database behind it."""
    server = start_discard_server(tmp_path_factory.mktemp("discard-smtp"))
    yield server
    stop_server(server.proc)


def start_discard_server(directory, **env):
    directory = Path(directory)
    capture_dir = directory / "captured"
    capture_dir.mkdir(exist_ok=True)
    starttls_port, tls_port = free_port(), free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLAYER_")}
    child_env.update(INBOXLAYER_SERVER_DATA_DIR=str(directory / "var"), INBOXLAYER_SMTP_HOST=HOST,
                     INBOXLAYER_SMTP_STARTTLS_PORT=str(starttls_port), INBOXLAYER_SMTP_TLS_PORT=str(tls_port),
                     INBOXLAYER_SERVER_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    child_env.update({k: str(v) for k, v in env.items()})
    argv = [sys.executable, "-c", DISCARD_SERVER_CODE, "--user", f"{DISCARD_USER}:{DISCARD_PASSWORD}",
            "--capture-dir", str(capture_dir)]
    proc = _start(argv, child_env, directory / "smtpd.log", (starttls_port, tls_port))
    return SimpleNamespace(host=HOST, starttls_port=starttls_port, tls_port=tls_port, proc=proc,
                           cafile=directory / "var" / "tls" / "smtp-cert.pem", capture_dir=capture_dir,
                           user=DISCARD_USER, password=DISCARD_PASSWORD, log_path=directory / "smtpd.log")


@pytest.fixture
def raw_client(discard_smtp):
    """Factory for RawClient against the discard server: raw_client(port="starttls"|"tls",
    tls=True, login=True). Closed after the test."""
    clients = []

    def connect(port="starttls", tls=True, login=False, server=None, source=None):
        server = server or discard_smtp
        client = RawClient(server, implicit_tls=(port == "tls"), source=source)
        clients.append(client)
        assert client.reply().startswith("220 ")
        if tls and port != "tls":
            client.starttls()
        if login:
            client.cmd("EHLO client.example")
            assert client.login(server.user, server.password) == "235 2.7.0 Authentication successful"
        return client

    yield connect
    for client in clients:
        client.close()


class RawClient:
    """SMTP over a socket, byte for byte: for smuggling, pipelining and malformed input."""

    def __init__(self, server, implicit_tls=False, source=None, timeout=30):
        self.server = server
        port = server.tls_port if implicit_tls else server.starttls_port
        self.sock = socket.create_connection((server.host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        if implicit_tls:
            self.sock = tls_context(server.cafile).wrap_socket(self.sock, server_hostname=server.host)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def _line(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"server closed the connection; unread: {self.buf!r}")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8")

    def reply(self):
        """One complete reply; a multi-line reply comes back as its lines joined by newlines."""
        lines = [self._line()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self._line())
        return "\n".join(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def starttls(self):
        assert self.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        assert self.buf == b""
        self.sock = tls_context(self.server.cafile).wrap_socket(self.sock, server_hostname=self.server.host)

    def login(self, username, password):
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {token}")

    def authenticate(self, username, password, ehlo="client.example"):
        """Read the greeting, then STARTTLS, EHLO and AUTH PLAIN (asserted 235); returns the greeting."""
        greeting = self.reply()
        self.starttls()
        self.cmd(f"EHLO {ehlo}")
        assert self.login(username, password) == codes.AUTH_OK
        return greeting

    def start_data(self, sender, recipient="someone@example.com"):
        """MAIL, RCPT and DATA pipelined, asserting their 250, 250 and 354."""
        self.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n")
        assert [self.reply() for _ in range(3)] == [codes.SENDER_OK, codes.RECIPIENT_OK, codes.START_DATA]

    def is_closed(self):
        """True when the server has closed the connection (EOF with nothing left unread)."""
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def message(sender="agent@inboxlayer.dev", to="someone@example.com", subject="hello", body="Hello there.\r\n"):
    return (f"From: Agent <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}").encode()
