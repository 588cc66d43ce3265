"""Fixtures for the operations tests: whole processes as users deploy them (a pytest plugin).

``cluster`` starts `inboxlayer smtpd` / `worker` / `web` child processes, each configured only
through environment variables (as the Procfile runs them), against this test's database, Redis
prefix and the moto SES server. Every process is stopped after the test.
"""
import os
import signal
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import free_port
from tests.helpers import wait_for_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def deploy_env(config, **extra):
    """The environment a platform would give every process: URLs and INBOXLAYER_* only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLAYER_")}
    env.update({
        "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "DATABASE_URL": config["database"]["url"],
        "REDIS_URL": config["redis"]["url"],
        "INBOXLAYER_REDIS_PREFIX": config["redis"]["prefix"],
        "INBOXLAYER_SES_ENDPOINT_URL": config["ses"]["endpoint_url"],
        "INBOXLAYER_SERVER_DATA_DIR": config["server"]["data_dir"],
        "INBOXLAYER_WEB_SECRET_KEY": "ops-test-secret",
        "INBOXLAYER_SERVER_LOG_FORMAT": "json",
        "INBOXLAYER_SMTP_HOST": "127.0.0.1",
        "INBOXLAYER_RELAY_RECONCILE_AFTER": "2",
        "INBOXLAYER_RELAY_RECONCILE_INTERVAL": "1",
        "INBOXLAYER_RELAY_BACKOFF_BASE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    for name, plan in config["plans"].items():
        for key, value in plan.items():
            env[f"INBOXLAYER_PLANS_{name.upper()}_{key.upper()}"] = str(value)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Cluster:
    def __init__(self, config, log_dir):
        self.config, self.log_dir = config, Path(log_dir)
        self.procs = []

    def _spawn(self, name, argv, env):
        log_path = self.log_dir / f"{name}-{len(self.procs)}.log"
        log = open(log_path, "ab")
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        node = SimpleNamespace(name=name, proc=proc, log_path=log_path)
        self.procs.append(node)
        return node

    def smtp(self, **extra):
        port, tls_port, metrics_port = free_port(), free_port(), free_port()
        env = deploy_env(self.config, INBOXLAYER_SMTP_STARTTLS_PORT=port, INBOXLAYER_SMTP_TLS_PORT=tls_port,
                         INBOXLAYER_METRICS_SMTP_PORT=metrics_port, **extra)
        node = self._spawn("smtp", ["inboxlayer", "smtpd"], env)
        node.port, node.tls_port, node.metrics_port = port, tls_port, metrics_port
        wait_for_port(port, timeout=30, proc=node.proc)
        return node

    def worker(self, **extra):
        metrics_port = free_port()
        node = self._spawn("worker", ["inboxlayer", "worker"],
                           deploy_env(self.config, INBOXLAYER_METRICS_WORKER_PORT=metrics_port, **extra))
        node.metrics_port = metrics_port
        wait_for_port(metrics_port, timeout=30, proc=node.proc)  # served once the worker is configured
        return node

    def web(self, **extra):
        port = free_port()
        node = self._spawn("web", ["inboxlayer", "web", "--workers", "1"], deploy_env(self.config, PORT=port, **extra))
        node.port = port
        wait_for_port(port, timeout=30, proc=node.proc)
        node.url = f"http://127.0.0.1:{port}"
        return node

    def stop(self, node, sig=signal.SIGTERM, timeout=40):
        if node.proc.poll() is None:
            os.killpg(node.proc.pid, sig)
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(10)
        return node.proc.returncode

    def stop_all(self):
        for node in reversed(self.procs):
            self.stop(node, signal.SIGTERM, timeout=20)

    def logs(self):
        return "\n".join(f"--- {n.log_path.name}\n{n.log_path.read_text(errors='replace')}" for n in self.procs)

    @property
    def cafile(self):
        return Path(self.config["server"]["data_dir"]) / "tls" / "smtp-cert.pem"


@pytest.fixture
def cluster(config, tmp_path):
    c = Cluster(config, tmp_path)
    yield c
    c.stop_all()


def smtp_send(port, cafile, address, token, recipients, subject="hello", timeout=30):
    """One message over STARTTLS + AUTH PLAIN; returns (code, text) of the end-of-DATA reply, or of
    the first command that was refused."""
    message = (f"From: <{address}>\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n\r\n"
               f"body of {subject}\r\n").encode()
    client = smtplib.SMTP("127.0.0.1", port, timeout=timeout)
    try:
        client.starttls(context=ssl.create_default_context(cafile=str(cafile)))
        client.login(address, token)
        code, text = client.mail(address)
        if code != 250:
            return code, text.decode()
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            if code not in (250, 251):
                return code, text.decode()
        code, text = client.data(message)
        return code, text.decode()
    finally:
        # The reply above is what counts; a QUIT answered 421 by a node shutting down must not
        # make the caller think the message was lost and send it again.
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()
