"""Fixtures for the api tests (a pytest plugin registered in conftest.py).

``api_server`` serves the real Flask app with a real WSGI server (werkzeug, threaded) on a
loopback port, so the tests speak HTTP like any client. ``api`` is a requests session bound to
it with the ``account`` fixture's token.
"""
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent


class ApiSession(requests.Session):
    """requests with a base URL: ``api.get("/v1/outbound")``."""

    def __init__(self, base_url, token=None):
        super().__init__()
        self.base_url = base_url
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", 30)
        return super().request(method, self.base_url + url, *args, **kwargs)


@pytest.fixture
def api_server(app):
    """Base URL of the app served by werkzeug's threaded WSGI server on 127.0.0.1:<free port>."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="api-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    server.server_close()


@pytest.fixture
def api(api_server, account):
    with ApiSession(api_server, account.token) as session:
        yield session


@pytest.fixture
def anonymous_api(api_server):
    with ApiSession(api_server) as session:
        yield session


@pytest.fixture
def cli_home(tmp_path):
    """A private config dir for the client CLI (credentials.json lives here)."""
    home = tmp_path / "cli-home"
    home.mkdir()
    return home


@pytest.fixture
def run_cli(subprocess_env, cli_home):
    """Run `python -m cli ARGS...` as a child process; returns a CompletedProcess with text output.

    The child sees the test's server settings (INBOXLAYER_CONFIG) and a private INBOXLAYER_HOME;
    ``env`` adds or removes (value None) variables.
    """
    def run(*args, env=None, timeout=60, input=None):
        child_env = {**subprocess_env, "INBOXLAYER_HOME": str(cli_home), "COLUMNS": "200", "NO_COLOR": "1"}
        for name, value in (env or {}).items():
            if value is None:
                child_env.pop(name, None)
            else:
                child_env[name] = value
        return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT, env=child_env,
                              capture_output=True, text=True, timeout=timeout, input=input)

    return run


@pytest.fixture
def smtp_client_for():
    """Factory: smtp_client_for(server)(username, password) -> smtplib client over STARTTLS on
    ``server`` (from start_smtp_server), trusting only that server's certificate."""
    from tests.fixtures_smtp import tls_context

    clients = []

    def for_server(server):
        def connect(username, password):
            client = smtplib.SMTP(server.host, server.starttls_port, timeout=30)
            clients.append(client)
            client.starttls(context=tls_context(server.cafile))
            client.ehlo()
            client.login(username, password)
            return client

        return connect

    yield for_server
    for client in clients:
        try:
            client.close()
        except OSError:
            pass


def send_body(**overrides):
    body = {"to": ["bob@example.com"], "subject": "Hello", "text": "Hi Bob"}
    body.update(overrides)
    return body
