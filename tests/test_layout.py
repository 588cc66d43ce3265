"""The package layout the code is organised by (docs: README "Architecture", issue 11): core/ is
protocol-free, the web app and the client CLI never import the SMTP/worker package, and no two
modules import each other at import time. Read with ast (scripts/import_graph.py); nothing is mocked."""
import ast
import io
import pathlib
import sys

import pytest

from core import blobs
from core import ids
from core import ses

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import import_graph  # noqa: E402

# rq's Queue (the enqueuer, core/outbox.py) is allowed; rq's worker code is not.
FORBIDDEN_IN_CORE = ("flask", "werkzeug", "gevent", "typer", "rq.worker", "smtpd_worker", "webapp", "cli")
# werkzeug.security is hashlib password hashing (core/accounts hashes sign-up passwords): no HTTP in it.
ALLOWED_IN_CORE = ("werkzeug.security", "werkzeug.security.generate_password_hash")


def imported_names(path):
    """Every module name an ``import`` or ``from ... import`` in ``path`` names, at any depth."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_import_graph_has_no_cycles():
    edges, _ = import_graph.graph()
    assert import_graph.cycles(edges) == []


def test_import_graph_finds_a_cycle_when_two_modules_import_each_other():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_graph.cycles(edges) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", sorted((ROOT / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_no_protocol_stack(path):
    bad = sorted(name for name in imported_names(path) if name not in ALLOWED_IN_CORE
                 and any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN_IN_CORE))
    assert bad == []


@pytest.mark.parametrize("path", [ROOT / "models.py", ROOT / "settings.py"], ids=lambda p: p.name)
def test_bottom_layer_imports_nothing_above_it(path):
    """models.py and settings.py are what everything stands on: an import of core/ (or a front-end)
    from them is an arrow running back up the house."""
    above = ("core", "smtpd_worker", "webapp", "cli", "runtime")
    assert sorted(name for name in imported_names(path) if name.split(".")[0] in above) == []


@pytest.mark.parametrize("path", sorted([*(ROOT / "webapp").rglob("*.py"), ROOT / "runtime.py",
                                         *(ROOT / "cli" / name for name in ("send.py", "outbound.py", "login.py"))]),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_web_runtime_and_client_cli_import_no_smtpd_worker(path):
    assert sorted(name for name in imported_names(path) if name.split(".")[0] == "smtpd_worker") == []


SES_SETTINGS = {"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:9", "connect_timeout": 7,
                "read_timeout": 33, "max_attempts_per_call": 4}


@pytest.mark.parametrize("purpose, connect, read, retries", [
    ("relay", 7, 33, {"total_max_attempts": 4, "mode": "standard"}),
    ("domains", 7, 10, {"total_max_attempts": 2, "mode": "standard"}),
    ("health", 3, 5, {"total_max_attempts": 1}),
])
def test_ses_client_policy_per_purpose(purpose, connect, read, retries):
    assert ses.policy(purpose, SES_SETTINGS).retries == retries  # what we ask botocore for
    client = ses.new_client(purpose, SES_SETTINGS)
    config = client.meta.config  # what the client got
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (
        connect, read, retries["total_max_attempts"])
    assert (client.meta.region_name, client.meta.endpoint_url) == ("eu-west-1", "http://127.0.0.1:9")


def test_ses_client_keeps_as_many_connections_as_asked():
    assert ses.new_client("domains", SES_SETTINGS).meta.config.max_pool_connections == 10  # botocore's default
    client = ses.new_client("relay", SES_SETTINGS, max_pool_connections=48)
    assert client.meta.config.max_pool_connections == 48
    assert client.meta.config.read_timeout == 33  # the purpose's policy still holds


def test_ses_client_relay_attempts_at_least_one():
    assert ses.policy("relay", {**SES_SETTINGS, "max_attempts_per_call": 0}).retries == {
        "total_max_attempts": 1, "mode": "standard"}


def test_blob_store_put_runs_through_installed_blocking_runner(tmp_path):
    calls = []

    def recording(function, *args):
        calls.append(function.__name__)
        return function(*args)

    store = blobs.FileBlobStore(tmp_path)
    blobs.set_blocking_io(recording)
    try:
        size = store.put("2026/01/01/ob_x.eml", io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"))
    finally:
        blobs.set_blocking_io(None)
    assert (calls, size) == (["_put"], 20)
    assert (tmp_path / "2026/01/01/ob_x.eml").read_bytes() == b"Subject: x\r\n\r\nbody\r\n"


def test_blob_store_put_runs_inline_by_default(tmp_path):
    assert blobs._run_blocking is blobs.run_directly
    assert blobs.FileBlobStore(tmp_path).put("2026/01/01/ob_y.eml", io.BytesIO(b"abc")) == 3


def test_public_id_new_ids_match_the_one_pattern():
    made = {ids.new_public_id() for _ in range(50)}
    assert len(made) == 50
    assert all(ids.is_public_id(public_id) and len(public_id) == 27 for public_id in made)


@pytest.mark.parametrize("text", ["ob_", "ob_XYZ", "ob_0123456789ABCDEF", "ob_" + "a" * 38, "xx_0123", "ob_12 ", "ob_1\n"])
def test_public_id_pattern_refuses_other_shapes(text):
    assert not ids.is_public_id(text)
