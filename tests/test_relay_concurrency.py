"""The relay worker with many SES calls in flight (`relay.concurrency`): every message reaches the
SES stand-in exactly once, a SIGKILL with 32 calls in flight loses none, a SIGTERM hands back the
rows still waiting for their turn, and the bytes-in-flight cap holds.

Workers are real `inboxlayer worker` child processes; SES is the moto stand-in over HTTP. The
only injected fault is the test fault plan (tests/fixtures_relay.py), a botocore event hook that
holds each SendEmail call for a while in the worker process: SES's own latency is outside our
control, and holding calls is what makes "32 in flight" observable.
"""
import signal
import threading
import time

import models
from smtpd_worker import jobs
from tests.fixtures_relay import events_of
from tests.fixtures_relay import max_overlap
from tests.fixtures_relay import outbound
from tests.fixtures_relay import slow_ses
from tests.helpers import wait_until


def _statuses(ids):
    e = models.OutboundEmail
    with models.db.connection_context():
        return dict(e.select(e.id, e.status).where(e.id.in_(ids)).tuples())


def _lines(path):
    return path.read_text().split() if path.exists() else []


def _assert_each_once_at_ses(ids, ses_sent):
    at_ses = [m["id"] for m in ses_sent()]
    recorded = [outbound(i).ses_message_id for i in ids]
    assert len(at_ses) == len(ids) == len(set(at_ses))
    assert sorted(at_ses) == sorted(recorded)


def test_worker_keeps_32_calls_in_flight_and_each_message_reaches_ses_once(relay_config, start_worker, submit,
                                                                           ses_sent, tmp_path):
    assert relay_config["relay"]["concurrency"] == 32  # the default
    mark, spans = tmp_path / "calling", tmp_path / "spans"
    ids = [submit().id for _ in range(48)]

    start_worker(**slow_ses(mark, 3, spans=spans))

    wait_until(lambda: set(_statuses(ids).values()) == {"sent"}, timeout=120, what="every message to be sent")
    _assert_each_once_at_ses(ids, ses_sent)
    # One process held 32 calls at once (its cap), never more: the first 32 of 48 start together.
    assert max_overlap(spans) == 32
    for i in ids:
        assert [t for t, _ in events_of(i)] == ["queued", "attempt", "sent"]


def test_sigkill_with_32_in_flight_loses_none_and_flags_only_those(relay_config, start_worker, submit, ses_sent,
                                                                    tmp_path, reconfigure):
    relay_config["relay"].update(lease=2, job_timeout=300, reconcile_after=1, reconcile_interval=1)
    reconfigure()
    mark = tmp_path / "calling"
    ids = [submit().id for _ in range(40)]
    doomed = start_worker(**slow_ses(mark, 60))
    wait_until(lambda: len(_lines(mark)) == 32, timeout=60, what="32 SES calls in flight")

    doomed.signal(signal.SIGKILL)
    doomed.wait(10)
    in_flight = {i for i, status in _statuses(ids).items() if status == "sending"}
    assert len(in_flight) == 32
    assert ses_sent() == []  # the held calls never left the dead process
    heir = start_worker()

    wait_until(lambda: set(_statuses(ids).values()) == {"sent"}, timeout=90, what="the heir to send every message")

    _assert_each_once_at_ses(ids, ses_sent)
    flagged = {i for i in ids if "possible_duplicate" in [t for t, _ in events_of(i)]}
    assert flagged == in_flight  # exactly the rows whose SES call was under way when the worker died
    for i in set(ids) - in_flight:
        assert [t for t, _ in events_of(i)] == ["queued", "attempt", "sent"]
        assert outbound(i).attempts == 1
    for i in in_flight:
        assert [t for t, _ in events_of(i)] == ["queued", "attempt", "possible_duplicate", "attempt", "sent"]
        [_, second] = [d for t, d in events_of(i) if t == "attempt"]
        assert second["worker"].endswith(f":{heir.proc.pid}")


def test_sigterm_hands_back_rows_waiting_for_the_rate_governor(relay_config, start_worker, submit, ses_sent,
                                                               reconfigure):
    # 0.2 messages/s: the first message goes at once, the others wait for their slot after claiming.
    relay_config["relay"]["max_send_rate"] = 0.2
    reconfigure()
    ids = [submit().id for _ in range(3)]
    worker = start_worker()
    wait_until(lambda: sorted(_statuses(ids).values()) == ["sending", "sending", "sent"], timeout=30,
               what="one message sent and two claimed, waiting for the governor")

    worker.signal(signal.SIGTERM)

    assert worker.wait(20) == 0
    assert len(ses_sent()) == 1
    waiting = [i for i in ids if outbound(i).status != "sent"]
    assert len(waiting) == 2
    for i in waiting:
        assert outbound(i).status == "queued"
        assert [t for t, _ in events_of(i)] == ["queued", "attempt", "released"]


def test_inflight_bytes_cap_makes_a_job_wait_for_room(relay_config, reconfigure):
    relay_config["relay"]["max_inflight_bytes"] = 1000
    reconfigure()
    budget, stop = jobs.InflightBytes(), threading.Event()
    assert budget.acquire(600, stop)
    second_done = threading.Event()

    def second():
        assert budget.acquire(600, stop)
        second_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not second_done.wait(0.5)  # 600 + 600 > 1000: it waits while the first holds its bytes
    assert budget.used == 600

    budget.release(600)

    assert second_done.wait(5)
    thread.join()
    assert budget.used == 600
    # A message bigger than the cap runs alone: it gets in once nothing else is in flight...
    budget.release(600)
    assert budget.acquire(5000, stop)
    # ...and a waiter gives up (the row is handed back) when the worker shuts down.
    stop.set()
    assert budget.acquire(10, stop) is False
    budget.release(5000)
    assert budget.used == 0


def test_job_timeouts_of_many_threads_share_one_watchdog():
    """Job timeouts (relay.job_timeout) are raised in the job's own thread by the process's one
    watchdog thread: a job past its timeout is stopped, one that ended in time never is (not even
    after its deadline passes), and the watchdog starts no thread per job."""
    from rq.timeouts import JobTimeoutException

    from smtpd_worker.worker import WatchdogDeathPenalty

    outcome = {}

    def job(name, timeout, seconds, linger):
        try:
            with WatchdogDeathPenalty(timeout, JobTimeoutException):
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    time.sleep(0.01)
            outcome[name] = "finished"
            deadline = time.monotonic() + linger  # past its own timeout: nothing may arrive now
            while time.monotonic() < deadline:
                time.sleep(0.01)
            outcome[name] = "finished, not stopped later"
        except JobTimeoutException:
            outcome[name] = "stopped" if name not in outcome else "stopped after it finished"

    threads_before = threading.active_count()
    runs = [threading.Thread(target=job, args=("slow", 1, 30, 0)),
            threading.Thread(target=job, args=("quick", 1.5, 0.1, 3))]
    runs += [threading.Thread(target=job, args=(f"quick{n}", 1, 0.05, 1.5)) for n in range(20)]
    started = time.monotonic()
    for thread in runs:
        thread.start()
    assert threading.active_count() <= threads_before + len(runs) + 1  # the job threads and one watchdog
    for thread in runs:
        thread.join(40)
    assert outcome.pop("slow") == "stopped"
    assert time.monotonic() - started < 10  # stopped near its 1 s timeout, not after 30 s of work
    assert set(outcome.values()) == {"finished, not stopped later"} and len(outcome) == 21


def test_relay_client_keeps_a_connection_per_job_in_flight(relay_config, reconfigure):
    """The worker's one SES client is shared by `relay.concurrency` jobs: its HTTP pool holds that
    many connections (botocore keeps 10 by default and would open, against real SES with a TLS
    handshake, a new connection for every call beyond them and drop it after)."""
    from smtpd_worker import transport

    relay_config["relay"]["concurrency"] = 40
    reconfigure()
    transport.reset_client()
    try:
        assert transport.client().meta.config.max_pool_connections == 40
    finally:
        transport.reset_client()
