"""Group commit on the submit path (core/group_commit.py, core/submit.py): messages that end at the
same moment share one transaction, yet each gets its own answer, only once its batch is durable.

To make a batch deterministically (no timing), a test holds the lock the leader needs (the sender's
usage row on Postgres, the write lock on SQLite): the first message's commit blocks on it, the
next ones queue behind (``inboxlayer_submit_waiting`` says how many), and releasing the lock lets
the leader finish and the queued messages go as one batch.
"""
import io
import json
import os
import subprocess
import sys
import sqlite3
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest
from prometheus_client import REGISTRY

import models
from core import quota
from core import submit
from core.errors import QuotaExceeded
from core.errors import TemporaryFailure
from tests import smtp_codes as codes
from tests.fixtures_smtp import message
from tests.helpers import free_port
from tests.helpers import make_account

RECIPIENT = "known@example.com"


def batches():
    """(batches committed, messages in them) by this process's submit path."""
    return (REGISTRY.get_sample_value("inboxlayer_submit_batch_size_count") or 0,
            REGISTRY.get_sample_value("inboxlayer_submit_batch_size_sum") or 0)


def known(*accounts_):
    """Make RECIPIENT a known recipient of each inbox: no first contact, so the batched path."""
    with models.db.connection_context():
        for account in accounts_:
            models.KnownRecipient.insert(inbox=account.inbox.id, address=RECIPIENT).on_conflict_ignore().execute()


def set_usage(user, count):
    with models.db.connection_context():
        models.SendUsage.insert(user=user, day=models.today(), count=count).on_conflict(
            conflict_target=[models.SendUsage.user, models.SendUsage.day],
            update={models.SendUsage.count: count}).execute()


def wait_until(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class HeldLock:
    """Blocks every submission's commit: on Postgres a row lock on ``user``'s usage row of today
    (every batch writes it first, in account order), on SQLite the database write lock."""

    def __init__(self, config, *users):
        url = config["database"]["url"]
        if url.startswith("sqlite:///"):
            self.conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None, timeout=30)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            for user in users:
                with models.db.connection_context():
                    models.SendUsage.insert(user=user, day=models.today(), count=0).on_conflict_ignore().execute()
            self.conn = psycopg2.connect(url)
            self.conn.cursor().execute("SELECT 1 FROM send_usage WHERE user_id IN %s AND day = %s FOR UPDATE",
                                       (tuple(u.id for u in users), models.today()))

    def release(self):
        if isinstance(self.conn, sqlite3.Connection):
            self.conn.execute("COMMIT")
        else:
            self.conn.commit()
        self.conn.close()


def spool(account, subject="batched"):
    return io.BytesIO(message(account.address, to=RECIPIENT, subject=subject))


def submit_one(account, subject, idempotency_key=None):
    try:
        return submit.submit(account.user, account.inbox, account.address, [RECIPIENT], spool(account, subject),
                             via="api", idempotency_key=idempotency_key,
                             request_hash="h" + subject if idempotency_key else None)
    except Exception as exc:  # the test compares outcomes
        return exc


def rows():
    with models.db.connection_context():
        return {(o.public_id, o.user_id) for o in models.OutboundEmail.select()}


def test_lone_message_is_a_batch_of_one(config, account):
    """Nobody else committing: the message commits at once, alone (it never waits for company)."""
    known(account)
    before = batches()
    outbound = submit_one(account, "alone")
    assert not isinstance(outbound, Exception), outbound
    assert batches() == (before[0] + 1, before[1] + 1)
    assert rows() == {(outbound.public_id, account.user.id)}


def test_batch_member_over_quota_does_not_fail_its_neighbours(config, account):
    """Eight messages committed as one batch: the one whose account is over quota is refused, a
    reused idempotency key replays, the others are stored, each with its own answer."""
    other = make_account(email="other@example.com", local_part="other")
    known(account, other)
    limit = quota.plan_of(other.user).daily_send_limit
    set_usage(other.user, limit)  # the other account has nothing left
    first = submit_one(account, "first", idempotency_key="dup")
    assert not isinstance(first, Exception), first
    lock = HeldLock(config, account.user)
    before = batches()
    with ThreadPoolExecutor(8) as pool:
        leader = pool.submit(submit_one, account, "leader")
        wait_until(lambda: submit._batcher._leading, "the leader to block on the lock")
        ours = [pool.submit(submit_one, account, f"mine-{i}") for i in range(5)]
        over = pool.submit(submit_one, other, "over-quota")
        replay = pool.submit(submit_one, account, "first", idempotency_key="dup")
        wait_until(lambda: submit._batcher.waiting() == 7, "seven messages queued behind the leader")
        lock.release()
        leader, ours, over, replay = leader.result(60), [f.result(60) for f in ours], over.result(60), replay.result(60)
    assert batches() == (before[0] + 2, before[1] + 1 + 7)  # the leader's batch, then the seven together
    assert isinstance(over, QuotaExceeded)
    assert replay.replayed and replay.id == first.id
    for outbound in [leader] + ours:
        assert not isinstance(outbound, Exception), outbound
        assert not getattr(outbound, "replayed", False)
    assert rows() == {(o.public_id, account.user.id) for o in [first, leader] + ours}
    with models.db.connection_context():
        assert models.sends_today(other.user) == limit  # nothing charged for the refused one
        assert models.sends_today(account.user) == 7
        assert models.Message.select().count() == 7


@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
def test_connection_killed_during_a_batch_fails_the_batch_and_stores_nothing(config, account):
    """The committer's Postgres backend is terminated while its batch waits for a lock: every
    member gets a temporary failure and none of their rows exist; the next message goes through."""
    known(account)
    lock = HeldLock(config, account.user)
    admin = psycopg2.connect(config["database"]["url"])
    admin.autocommit = True

    def blocked_backends():
        with admin.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
            return [pid for (pid,) in cur.fetchall()]

    def kill_blocked():
        wait_until(lambda: len(blocked_backends()) == 1, "the batch's statement to wait for the lock")
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (blocked_backends()[0],))

    try:
        with ThreadPoolExecutor(6) as pool:
            before = batches()
            leader = pool.submit(submit_one, account, "leader")
            wait_until(lambda: submit._batcher._leading, "the leader to start its batch")
            members = [pool.submit(submit_one, account, f"member-{i}") for i in range(4)]
            wait_until(lambda: submit._batcher.waiting() == 4, "four messages queued behind the leader")
            kill_blocked()  # the leader's batch of one
            assert isinstance(leader.result(60), TemporaryFailure)
            kill_blocked()  # the batch of four
            outcomes = [f.result(60) for f in members]
        assert batches() == (before[0] + 2, before[1] + 5)
        assert all(isinstance(outcome, TemporaryFailure) for outcome in outcomes), outcomes
        assert rows() == set()
    finally:
        lock.release()
        admin.close()
    after = submit_one(account, "after")
    assert rows() == {(after.public_id, account.user.id)}


def test_concurrent_smtp_sessions_and_rest_sends_each_get_their_own_answer(config, db_backend, account,
                                                                           start_smtp_server, smtp_client_for, api):
    """Twelve SMTP sessions and four REST sends end at the same moment; the SMTP ones are committed as
    batches in the server process, the REST ones in this one. The other account has one send
    left and sends twice: one of its messages gets 250, the other the quota refusal, and every
    other client gets its 250 with exactly its own row.

    On Postgres the batches are forced (the usage rows are locked until every message waits). On
    SQLite they are not: a gevent server waiting for SQLite's write lock waits in C, whole
    process, so nothing could queue; there the messages batch as they happen to."""
    pg = db_backend == "postgres"
    other = make_account(email="other@example.com", local_part="other")
    known(account, other)
    limit = quota.plan_of(other.user).daily_send_limit
    set_usage(other.user, limit - 1)
    metrics_port = free_port()
    server = start_smtp_server(INBOXLAYER_METRICS_SMTP_PORT=metrics_port)
    connect = smtp_client_for(server)

    def server_metric(name):
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

    clients = [connect(account.address, account.token) for _ in range(10)]
    clients += [connect(other.address, other.token) for _ in range(2)]
    for client in clients:  # each stops just before the end of its data
        client.mail(client.user)
        client.rcpt(RECIPIENT)
    lock = HeldLock(config, account.user, other.user) if pg else None

    def finish(i):
        client = clients[i]
        code, reply = client.data(message(client.user, to=RECIPIENT, subject=f"smtp-{i}"))
        return code, reply.decode(), client.user

    def rest(i):
        response = api.post(f"/v1/inboxes/{account.address}/send",
                            json={"to": [RECIPIENT], "subject": f"rest-{i}", "text": "hi"})
        return response.status_code, response.json()

    with ThreadPoolExecutor(16) as pool:
        smtp_futures = [pool.submit(finish, i) for i in range(len(clients))]
        if pg:
            wait_until(lambda: server_metric("inboxlayer_submit_waiting") == len(clients) - 1,
                       "the SMTP messages queued behind the blocked leader")
        rest_futures = [pool.submit(rest, i) for i in range(4)]
        if pg:
            wait_until(lambda: submit._batcher.waiting() == 3, "the REST sends queued behind their blocked leader")
            lock.release()
        smtp_results = [f.result(60) for f in smtp_futures]
        rest_results = [f.result(60) for f in rest_futures]
    assert server_metric("inboxlayer_submit_batch_size_sum") == len(clients)
    if pg:
        assert server_metric("inboxlayer_submit_batch_size_count") == 2  # the leader, then the eleven together
    ours = [r for r in smtp_results if r[2] == account.address]
    theirs = sorted(r[:2] for r in smtp_results if r[2] == other.address)
    assert all(code == 250 for code, _, _ in ours), ours
    assert theirs[0][0] == 250 and f"{theirs[1][0]} {theirs[1][1]}" == codes.quota_exceeded(limit, limit), theirs
    assert all(status == 202 for status, _ in rest_results), rest_results
    ids = {reply.rsplit(" ", 1)[1] for code, reply, _ in smtp_results if code == 250}
    ids |= {body["id"] for _, body in rest_results}
    assert len(ids) == 10 + 1 + 4
    with models.db.connection_context():
        stored = {o.public_id for o in models.OutboundEmail.select()}
        assert models.sends_today(other.user) == limit
    assert stored == ids
    for client in clients:
        client.quit()


def test_blob_names_are_synced_once_per_directory_through_the_blocking_runner(tmp_path):
    """put(sync_name=False) leaves the directory fsync to sync_names, which the batch's leader
    calls once for the batch (one fsync per directory, on the thread pool in the SMTP server)."""
    from core import blobs

    calls = []

    def recording(function, *args):
        calls.append((function.__name__, args[-1] if function.__name__ == "_fsync_dirs" else None))
        return function(*args)

    store = blobs.FileBlobStore(tmp_path)
    blobs.set_blocking_io(recording)
    try:
        keys = [f"2026/01/01/ob_{i}.eml" for i in range(3)] + ["2026/01/02/ob_3.eml"]
        for key in keys:
            assert store.put(key, io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"), sync_name=False) == 20
        store.sync_names(keys)
    finally:
        blobs.set_blocking_io(None)
    assert [name for name, _ in calls] == ["_put"] * 4 + ["_fsync_dirs"]
    assert calls[-1][1] == {tmp_path / "2026/01/01", tmp_path / "2026/01/02"}
    assert all((tmp_path / key).read_bytes() == b"Subject: x\r\n\r\nbody\r\n" for key in keys)


KILLED_FOLLOWER = """
from gevent import monkey
monkey.patch_all()
import json, threading
import gevent
from core import group_commit

release = threading.Event()
batches = []


def commit(items):
    batches.append([item.payload for item in items])
    if items[0].payload == "first":
        release.wait()
    for item in items:
        item.result = item.payload


batcher = group_commit.Batcher(commit)
leader = gevent.spawn(batcher.run, "first")
gevent.sleep(0.05)  # the leader commits "first" and waits
victim = gevent.spawn(batcher.run, "victim")
third = gevent.spawn(batcher.run, "third")
gevent.sleep(0.05)  # both queued behind it; "victim" is next in line to lead
victim.kill()  # its session is cut while it waits (a greenlet killed at a deadline or shutdown)
release.set()
answers = [leader.get(timeout=5).result, third.get(timeout=5).result]
print(json.dumps({"answers": answers, "batches": batches, "waiting": batcher.waiting()}))
"""


def test_a_follower_killed_while_waiting_leaves_no_one_stuck_behind_it():
    """Under gevent (as smtpd and the web run it) a caller killed while queued must not take the
    lead with it: without the hand-over the next caller waits forever for a leader (get() times out)."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", KILLED_FOLLOWER], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(root)}, cwd=str(root))
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"answers": ["first", "third"], "batches": [["first"], ["third"]], "waiting": 0}
