"""Fixtures: real PostgreSQL, real Redis, the moto SES server over HTTP, per-test isolation.

Every test that takes ``config`` runs once per database backend in INBOXLAYER_TEST_DATABASES
(default: sqlite and postgres). Services that cannot be reached fail the run loudly.
"""
import os
import shutil
import subprocess
import sys
import uuid
import weakref
from pathlib import Path

import psycopg2
import pytest
import redis as redis_lib
import requests

import models
import runtime
import settings
from tests.helpers import dump_toml
from tests.helpers import free_port
from tests.helpers import wait_for_port

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.fixtures_smtp", "tests.fixtures_relay", "tests.fixtures_web", "tests.fixtures_api",
                  "tests.fixtures_ops", "tests.fixtures_imap", "tests.fixtures_webhooks"]
PG_ADMIN_DSN = os.environ.get("INBOXLAYER_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
REDIS_URL = os.environ.get("INBOXLAYER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKENDS = [b.strip() for b in os.environ.get("INBOXLAYER_TEST_DATABASES", "sqlite,postgres").split(",") if b.strip()]

# boto3 needs credentials even for the stand-in; these are dummies for moto only.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for _name in [n for n in os.environ if n.startswith("INBOXLAYER_") and n not in settings.CLIENT_ENV_NAMES
              and not n.startswith("INBOXLAYER_TEST_")]:
    del os.environ[_name]  # the suite's settings come from fixtures, not the developer's shell
for _name in ("DATABASE_URL", "REDIS_URL", "PORT"):
    os.environ.pop(_name, None)


CLIENT_PROGRAMS = ("swaks", "s-nail", "mbsync", "fetchmail", "openssl")  # Debian packages test-services.sh installs


def _ensure_services():
    try:
        psycopg2.connect(PG_ADMIN_DSN, connect_timeout=3).close()
        redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        if not all(shutil.which(program) for program in CLIENT_PROGRAMS):
            raise LookupError("a real client program is missing")
    except Exception:
        subprocess.run(["bash", str(ROOT / "scripts" / "test-services.sh")], check=True)
    # Fail loudly, never skip: these raise if the services are still not there.
    psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5).close()
    redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()


@pytest.fixture(scope="session")
def pg_url():
    """A database of our own for this test session (parallel sessions don't collide)."""
    _ensure_services()
    name = f"inboxlayer_t_{uuid.uuid4().hex[:10]}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    params = dict(p.split("=", 1) for p in PG_ADMIN_DSN.split())
    url = f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{name}"
    models.init_database(url)
    with models.db.connection_context():
        models.migrate_schema()
    _close_pool()
    yield url
    _close_pool()
    # A fresh admin connection: a test may have restarted the server since the session began.
    _admin_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
               "AND pid <> pg_backend_pid()", (name,))
    _admin_sql(f'DROP DATABASE IF EXISTS "{name}"')


def _admin_sql(sql, args=None):
    admin = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=10)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql, args)
    finally:
        admin.close()


@pytest.fixture(scope="session")
def ses_endpoint(tmp_path_factory):
    """The SES stand-in: moto in server mode over HTTP on a loopback port."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    wait_for_port(port, proc=proc)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=BACKENDS)
def db_backend(request):
    return request.param


@pytest.fixture
def config(db_backend, request, tmp_path, ses_endpoint):
    """A settings dict for this test, installed process-wide, with a fresh schema and Redis prefix."""
    _ensure_services()
    if db_backend == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'inboxlayer.db'}"
    prefix = f"t{uuid.uuid4().hex[:12]}"
    cfg = settings.load_config(environ={
        "DATABASE_URL": url,
        "REDIS_URL": REDIS_URL,
        "INBOXLAYER_REDIS_PREFIX": prefix,
        "INBOXLAYER_SERVER_DATA_DIR": str(tmp_path / "var"),
        "INBOXLAYER_SES_ENDPOINT_URL": ses_endpoint,
        "INBOXLAYER_SES_SNS_CERT_HOSTS": "127.0.0.1,localhost",
        "INBOXLAYER_WEB_SECRET_KEY": "test-secret",
        "INBOXLAYER_SERVER_HOSTNAME": "localhost",
        "INBOXLAYER_DATABASE_MAX_CONNECTIONS": "60",
        # Suites written before the first-contact cap send to hundreds of distinct addresses from one
        # inbox a day; the cap's own tests (test_recipient_safety.py) set the limit they exercise.
        "INBOXLAYER_PLANS_FREE_NEW_RECIPIENTS_PER_DAY": "100000",
    })
    runtime.configure(cfg)
    with models.db.connection_context():
        if db_backend == "postgres":
            tables = ", ".join(f'"{m._meta.table_name}"' for m in models.MODELS)
            models.db.execute_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        else:
            models.migrate_schema()
    requests.post(f"{ses_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    _verify_default_domain(cfg, ses_endpoint)
    yield cfg
    _close_pool()
    _clean_redis(prefix)


def _close_pool():
    """Return a pooled database's idle connections; each test builds a new pool."""
    close_all = getattr(models.db.obj, "close_all", None)
    if close_all is not None:
        close_all()


def _verify_default_domain(cfg, endpoint):
    import boto3

    boto3.client("sesv2", endpoint_url=endpoint, region_name=cfg["ses"]["region"]).create_email_identity(
        EmailIdentity=cfg["server"]["default_domain"])


def _clean_redis(prefix):
    client = redis_lib.Redis.from_url(REDIS_URL)
    for pattern in (f"{prefix}:*", f"rq:*{prefix}-*"):
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def config_file(config, tmp_path):
    """The test's settings as a TOML file, for subprocesses: env INBOXLAYER_CONFIG=<path>."""
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(config))
    return path


@pytest.fixture
def subprocess_env(config_file):
    """Environment for a child `inboxlayer` process that sees this test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLAYER_")}
    env["INBOXLAYER_CONFIG"] = str(config_file)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def free_tcp_port():
    return free_port()


@pytest.fixture
def redis_conn(config):
    from core import outbox

    return outbox.connection()


_apps = weakref.WeakSet()  # the apps the `app` fixture made, for `reconfigure`


@pytest.fixture
def app(config):
    from webapp import create_app

    made = create_app({**config, "TESTING": True})
    _apps.add(made)
    return made


@pytest.fixture
def reconfigure(config):
    """Install the test's ``config`` again after the test changed it. Settings are read once into
    their typed view when installed (``settings.use``, ``create_app``), as in a serving process, so
    an edit made after start-up is seen only once ``reconfigure()`` installs it; the test's app
    (the ``app`` fixture) gets its view rebuilt too."""
    from webapp import views

    def install():
        settings.use(config)
        for made in list(_apps):
            made.extensions[views.SETTINGS_EXTENSION] = settings.view(made.config["INBOXLAYER"])
    return install


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def account(config):
    """A user with an API token and an inbox agent@<default domain>."""
    from tests.helpers import make_account

    return make_account()


@pytest.fixture(autouse=True)
def _db_closed_after_test():
    yield
    if models.db.obj is not None:
        assert models.db.is_closed(), "a test or the code under test left a database connection open"
