"""Small helpers shared by tests (no fixtures here; see conftest.py)."""
import json
import socket
import time
from types import SimpleNamespace

import models
from core import accounts
from core import keys


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, host="127.0.0.1", timeout=20.0, proc=None):
    """Poll until something listens on ``port`` (start-up readiness, not a sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_until(predicate, timeout=20.0, interval=0.05, what="condition"):
    """Poll ``predicate`` until it returns a truthy value; return it or fail with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def dump_toml(config):
    """Serialise our settings dict (tables of str/int/float/bool/list[str]) as TOML."""
    lines = []

    def table(prefix, data):
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
        for k, v in data.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", config)
    return "\n".join(lines) + "\n"


def make_account(email="agent-owner@example.com", local_part="agent", password="correct horse battery",
                 plan=None, token_name="test"):
    """Create a user, one API token and one default-domain inbox. Returns a namespace with the
    user, token (full), token_row, inbox and address."""
    from werkzeug.security import generate_password_hash

    import settings

    config = settings.get()
    with models.db.connection_context(), models.db.atomic():
        user = models.User.create(email=email, password_hash=generate_password_hash(password),
                                  plan=plan or config["server"]["default_plan"])
        # Every permission, as a key made before scopes has (migration 0006): tests create inboxes with it.
        token_row, token = accounts.create_token(user, token_name, keys.Scope(permissions=frozenset(keys.PERMISSIONS)))
        inbox = accounts.create_inbox(user, local_part, None, config["server"]["default_domain"])
    return SimpleNamespace(user=user, token=token, token_row=token_row, inbox=inbox, address=inbox.address,
                           email=email, password=password)
