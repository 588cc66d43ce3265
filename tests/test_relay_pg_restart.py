"""Postgres going away during a burst: no accepted message is lost, none is sent twice.

Two ways: every server-side connection of this test's database killed three times with
pg_terminate_backend (connections die mid-use and must be replaced), and a real restart of the
local cluster with pg_ctlcluster (connections die, then new ones are refused until it is back).
The restart briefly disturbs anything else using the machine's Postgres: run such suites one at
a time (`make test` does). Postgres only, by nature; SQLite has no server to restart.
"""
import io
import os
import subprocess
import threading
import time
from urllib.parse import urlsplit

import psycopg2
import pytest

import models
from core import errors
from core import submit
from tests.conftest import PG_ADMIN_DSN
from tests.fixtures_relay import make_message
from tests.fixtures_relay import outcomes
from tests.helpers import wait_until

pytestmark = pytest.mark.serial  # restarts the machine's Postgres: never beside other tests

BURST = 40


@pytest.fixture(params=["postgres"])
def db_backend(request):
    return request.param


def _terminate_backends(database):
    admin = psycopg2.connect(PG_ADMIN_DSN)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
            return cur.fetchone()[0]
    finally:
        admin.close()


def _restart_postgres():
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True,
                   capture_output=True, timeout=120)


def _submit_like_a_client(account, raw, tries=20, pause=0.0):
    """Submit as an SMTP client would: a 4xx (TemporaryFailure) means try again (after ``pause``)."""
    for _ in range(tries):
        try:
            return submit.submit(account.user, account.inbox, account.address, ["rcpt@example.com"],
                                     io.BytesIO(raw), via="smtp")
        except errors.TemporaryFailure:
            time.sleep(pause)  # the client's back-off before its retry
    raise AssertionError("the server kept answering 451")


def _assert_each_sent_once(accepted, ses_sent, workers):
    ids = [row.id for row in accepted]

    def all_sent():
        with models.db.connection_context():
            rows = list(models.OutboundEmail.select().where(models.OutboundEmail.id.in_(ids)))
        return rows if all(r.status == "sent" for r in rows) else None

    rows = wait_until(all_sent, timeout=90, interval=0.5, what="every accepted message to be sent")
    sent = ses_sent()
    assert len(rows) == BURST
    assert sorted(m["id"] for m in sent) == sorted(r.ses_message_id for r in rows)  # exactly once each
    assert outcomes(ids) == {i: ["sent"] for i in ids}  # every 250 ended exactly once
    assert all(w.proc.poll() is None for w in workers), "a worker died on the lost connections"


def test_relay_postgres_connections_killed_during_burst_every_accepted_message_sent_once(
        relay_config, account, start_worker, ses_sent, reconfigure):
    relay_config["relay"].update(reconcile_after=2, reconcile_interval=1)
    reconfigure()
    database = urlsplit(relay_config["database"]["url"]).path.lstrip("/")
    workers = [start_worker(), start_worker()]
    accepted = []
    killed = []

    def killer():
        for _ in range(3):
            wait_until(lambda: len(accepted) >= len(killed) * 12 + 8, what="the burst to progress")
            killed.append(_terminate_backends(database))

    chaos = threading.Thread(target=killer)
    chaos.start()
    for n in range(BURST):
        accepted.append(_submit_like_a_client(account, make_message(account.address, subject=f"burst {n}")))
    chaos.join(60)

    assert len(killed) == 3 and sum(killed) > 0  # connections really were cut mid-burst
    _assert_each_sent_once(accepted, ses_sent, workers)


def test_relay_postgres_restarted_during_burst_every_accepted_message_sent_once(
        relay_config, account, start_worker, ses_sent, reconfigure):
    relay_config["relay"].update(reconcile_after=2, reconcile_interval=1)
    reconfigure()
    workers = [start_worker(), start_worker()]
    accepted = []
    restarted = []

    def restarter():
        wait_until(lambda: len(accepted) >= 10, what="the burst to start")
        _restart_postgres()
        restarted.append(time.monotonic())

    chaos = threading.Thread(target=restarter)
    chaos.start()
    for n in range(BURST):
        accepted.append(_submit_like_a_client(account, make_message(account.address, subject=f"burst {n}"),
                                              tries=200, pause=0.1))
    chaos.join(120)

    assert len(restarted) == 1
    _assert_each_sent_once(accepted, ses_sent, workers)
