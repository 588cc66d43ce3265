"""A Postgres "restart" during a burst: no accepted message is lost, none is sent twice.

Restarting the machine's shared Postgres would break other test sessions running at the same
time, so this test kills every server-side connection of *its own* database with
pg_terminate_backend: to our processes that is exactly what a restart looks like (connections
die mid-use and must be replaced). Postgres only, by nature; SQLite has no server to restart.
"""
import io
import threading
from urllib.parse import urlsplit

import psycopg2
import pytest

import models
from smtpd_worker import submission
from tests.conftest import PG_ADMIN_DSN
from tests.fixtures_relay import make_message
from tests.fixtures_relay import outcomes
from tests.helpers import wait_until

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


def _submit_like_a_client(account, raw, tries=20):
    """Submit as an SMTP client would: a 4xx (TemporaryFailure) means try again."""
    for _ in range(tries):
        try:
            return submission.submit(account.user, account.inbox, account.address, ["rcpt@example.com"],
                                     io.BytesIO(raw), via="smtp")
        except submission.TemporaryFailure:
            continue
    raise AssertionError("the server kept answering 451")


def test_relay_postgres_connections_killed_during_burst_every_accepted_message_sent_once(
        relay_config, account, start_worker, ses_sent):
    relay_config["relay"].update(reconcile_after=2, reconcile_interval=1)
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
    ids = [row.id for row in accepted]

    def all_sent():
        with models.db.connection_context():
            rows = list(models.OutboundEmail.select().where(models.OutboundEmail.id.in_(ids)))
        return rows if all(r.status == "sent" for r in rows) else None

    rows = wait_until(all_sent, timeout=60, interval=0.5, what="every accepted message to be sent")
    sent = ses_sent()
    assert len(rows) == BURST
    assert sorted(m["id"] for m in sent) == sorted(r.ses_message_id for r in rows)  # exactly once each
    assert outcomes(ids) == {i: ["sent"] for i in ids}  # every 250 ended exactly once
    assert all(w.proc.poll() is None for w in workers), "a worker died on the lost connections"
