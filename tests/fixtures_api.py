"""Fixtures for the api tests (a pytest plugin registered in conftest.py).

``api_server`` serves the real Flask app with a real WSGI server (werkzeug, threaded) on a
loopback port, so the tests speak HTTP like any client. ``api`` is a requests session bound to
it with the ``account`` fixture's token.
"""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

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


def send_body(**overrides):
    body = {"to": ["bob@example.com"], "subject": "Hello", "text": "Hi Bob"}
    body.update(overrides)
    return body


def rq_job_ids(redis_conn, queue_name):
    from rq import Queue

    return list(Queue(queue_name, connection=redis_conn).job_ids)


def parse_json_output(stdout):
    return json.loads(stdout)


def no_traceback(result):
    return "Traceback" not in result.stdout + result.stderr


def env_without_client_overrides():
    return {k: None for k in ("INBOXLAYER_TOKEN", "INBOXLAYER_API_URL") if k in os.environ}


__all__ = ["ApiSession", "SimpleNamespace", "send_body", "rq_job_ids", "parse_json_output", "no_traceback",
           "env_without_client_overrides"]
