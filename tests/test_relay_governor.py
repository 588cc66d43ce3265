"""The cluster-wide SES rate governor (core/ses_rate.py) against the real Redis: one schedule for
every worker, MaxSendRate from settings or the shared copy of SES GetAccount, and SES throttling
slowing the whole cluster.

Two ``Governor`` objects in one process stand for two worker processes: they share nothing but
Redis, exactly like two machines. The cross-process test runs a real `inboxlayer worker` whose SES
calls are throttled by the test fault plan (a botocore hook answering SES's 429; throttling cannot
be provoked from moto).
"""
import time

import pytest

from core import ses_rate
from tests.fixtures_relay import events_of
from tests.fixtures_relay import outbound
from tests.fixtures_relay import slow_ses
from tests.helpers import wait_until


def test_two_governors_share_one_schedule_at_the_configured_rate(relay_config, reconfigure):
    relay_config["relay"]["max_send_rate"] = 10
    reconfigure()
    a, b = ses_rate.Governor(), ses_rate.Governor()

    waits = [(a if n % 2 else b).reserve() for n in range(20)]

    # Slots 1/10 s apart, whichever process asks: the 20th send is due ~1.9 s after the first.
    assert waits[0] == 0
    assert waits == sorted(waits)
    assert waits[-1] == pytest.approx(1.9, abs=0.25)  # minus the time the 20 round trips took
    steps = [later - earlier for earlier, later in zip(waits, waits[1:])]
    assert all(0 < step <= 0.1 + 1e-6 for step in steps)


def test_throttling_seen_by_one_worker_slows_the_others(relay_config, reconfigure):
    relay_config["relay"]["max_send_rate"] = 10
    reconfigure()
    a, b = ses_rate.Governor(), ses_rate.Governor()
    assert b.effective_rate() == 10

    assert a.throttled() == pytest.approx(5)
    assert a.throttled() == pytest.approx(2.5, abs=0.01)

    assert b.effective_rate() == pytest.approx(2.5, abs=0.05)  # recovers ~1/30 of the rate per second
    first, second = b.reserve(), b.reserve()
    assert second - first == pytest.approx(0.4, abs=0.02)  # slots 1/2.5 s apart for B too
    for _ in range(10):  # repeated throttling cannot stop the cluster: the floor is 1/16 of the rate
        a.throttled()
    assert b.effective_rate() == pytest.approx(10 * ses_rate.MIN_FACTOR, abs=0.05)


def test_rate_from_the_shared_getaccount_copy_or_none(relay_config, redis_conn):
    assert relay_config["relay"]["max_send_rate"] == 0  # the default: ask SES
    # The stand-in (moto) has no sesv2 GetAccount: the rate is unknown and sends go ungoverned.
    assert ses_rate.read_account_rate() is None
    assert ses_rate.Governor().rate() is None
    assert ses_rate.Governor().reserve() == 0
    # What one worker read from GetAccount (and shared in Redis) serves every other worker.
    redis_conn.set(ses_rate.account_rate_key(), "7.5")
    assert ses_rate.Governor().rate() == 7.5


def test_throttling_from_ses_slows_the_governor_for_the_cluster(relay_config, start_worker, submit, ses_sent,
                                                                 tmp_path, reconfigure):
    relay_config["relay"]["max_send_rate"] = 20
    reconfigure()
    row = submit()
    started = time.monotonic()

    start_worker(**slow_ses(tmp_path / "calling", 0, throttle=2))  # SES answers 429 twice, then accepts
    sent = wait_until(lambda: outbound(row.id).status == "sent" and outbound(row.id), timeout=60,
                      what="the message to be sent after two throttled attempts")

    assert [m["id"] for m in ses_sent()] == [sent.ses_message_id]
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "retry", "attempt", "retry", "attempt",
                                                  "sent"]
    # The worker's two throttling answers halved the cluster's rate twice; this process (another
    # "worker") sees it: 20/s * 1/4, plus at most what it recovered since (1/30 of the rate per second).
    effective = ses_rate.Governor().effective_rate()
    assert effective < 20
    assert effective <= 20 * (1 / 4 + (time.monotonic() - started) / ses_rate.RECOVERY) + 0.01
