"""Domain checks that never stall: concurrent checks within a per-pass budget against a silent
nameserver, the reconciler on its own thread beside them, and re-checks of verified domains.

Real parts: a UDP socket on loopback that never answers (a silent nameserver), the loopback DNS
server, the moto SES server, the real database and Redis, the worker's PeriodicRunner threads.
"""
import datetime
import json
import socket
import time

import pytest

import models
from core import accounts
from core import domains
from smtpd_worker import periodic
from core import outbox
from tests.dnsserver import publish
from tests.helpers import wait_until


@pytest.fixture
def silent_nameserver(config, reconfigure):
    """A bound UDP port that reads nothing and answers nothing: every lookup runs to its timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    previous = config["dns"]["resolver"]
    config["dns"]["resolver"] = f"127.0.0.1:{sock.getsockname()[1]}"
    reconfigure()
    yield sock
    config["dns"]["resolver"] = previous
    reconfigure()
    sock.close()


def pending_domains(user, count):
    """``count`` pending claims made directly (their checks never reach SES: DNS answers nothing)."""
    with models.db.connection_context(), models.db.atomic():
        return [models.Domain.create(user=user, name=f"d{n}.example.com", verification_token=f"token{n}",
                                     dkim_tokens=json.dumps([f"k{n}a", f"k{n}b", f"k{n}c"])).id
                for n in range(count)]


def checked_ids():
    with models.db.connection_context():
        return {d.id for d in models.Domain.select().where(models.Domain.last_checked_at.is_null(False))}


def add_verified(user, dns_server, name="mail.example.com"):
    with models.db.connection_context():
        domain = domains.add_domain(user, name)
    publish(dns_server, domains.expected_records(domain))
    checked = domains.check_domain(domain.id)
    assert checked.status == "verified"
    return checked


def set_fields(domain_id, **fields):
    with models.db.connection_context():
        models.Domain.update(**fields).where(models.Domain.id == domain_id).execute()


def domain_row(domain_id):
    with models.db.connection_context():
        return models.Domain.get_by_id(domain_id)


# -- concurrency and the budget -----------------------------------------------------------------------

def test_check_domains_silent_nameserver_checks_26_concurrently(config, account, silent_nameserver, reconfigure):
    config["dns"].update(timeout=1.0, check_concurrency=16)
    reconfigure()
    ids = pending_domains(account.user, 26)

    started = time.monotonic()
    assert domains.check_domains() == 26
    elapsed = time.monotonic() - started

    # Sequentially that is 26 lookups of 1 s; 16 at a time, two rounds.
    assert elapsed < 8, elapsed
    with models.db.connection_context():
        rows = list(models.Domain.select().where(models.Domain.id.in_(ids)))
    assert {(r.status, r.last_error) for r in rows} == {("pending", "DNS lookup failed, will retry: LifetimeTimeout")}


def test_check_domains_stops_at_budget_and_next_pass_starts_with_the_rest(config, account, silent_nameserver,
                                                                          reconfigure):
    config["dns"].update(timeout=1.0, check_concurrency=2, check_budget=1.8)
    reconfigure()
    pending_domains(account.user, 10)

    started = time.monotonic()
    assert domains.check_domains() == 2  # two at a time: one 1-s round fits in 1.8 s, a second does not
    assert time.monotonic() - started < 4

    first = checked_ids()
    assert len(first) == 2  # the domains cut off by the budget recorded nothing
    assert domains.check_domains() == 2
    second = checked_ids()
    assert len(second) == 4 and first < second  # never-checked domains first; the checked ones are not due


def test_check_domain_without_deadline_records_dns_timeout(config, account, silent_nameserver, reconfigure):
    config["dns"]["timeout"] = 0.5
    reconfigure()
    [domain_id] = pending_domains(account.user, 1)
    checked = domains.check_domain(domain_id)
    assert (checked.status, checked.last_error) == ("pending", "DNS lookup failed, will retry: LifetimeTimeout")


def test_periodic_runner_reconciler_runs_while_domain_checks_stall(relay_config, account, submit, redis_conn,
                                                                   silent_nameserver, reconfigure):
    relay_config["relay"].update(reconcile_after=1, reconcile_interval=1)
    # One domain at a time, 5 s a lookup: the pass waits on DNS until its 8-s budget is spent.
    relay_config["dns"].update(timeout=5.0, check_concurrency=1, check_budget=8)
    reconfigure()
    pending_domains(account.user, 26)
    row = submit()
    lost = list(redis_conn.scan_iter(f"rq:*{outbox.relay_queue_name()}*"))
    redis_conn.delete(*lost)  # the row's job is gone: only the reconciler can bring it back
    runner = periodic.PeriodicRunner(relay_config)
    runner.start()
    [domain_thread] = [t for t in runner.threads if "core.domains:check_domains" in t.name]
    try:
        wait_until(lambda: outbox.relay_job_id(row.id) in outbox.relay_queue().job_ids, timeout=6,
                   what="the reconciler to re-enqueue the stuck row while domain checks wait on DNS")
        assert domain_thread.is_alive() and len(checked_ids()) < 26  # the domain pass is still waiting
    finally:
        runner.stop()
        for thread in runner.threads:
            thread.join(timeout=30)  # the domain pass ends with its budget
    assert not any(t.is_alive() for t in runner.threads)


# -- re-checks of verified domains ------------------------------------------------------------------

def test_check_domain_verified_losing_txt_keeps_sending_within_grace(config, account, dns_server):
    domain = add_verified(account.user, dns_server)
    dns_server.set(f"_inboxlayer.{domain.name}", "TXT")  # the owner lost the domain, or a DNS blip

    checked = domains.check_domain(domain.id)

    assert checked.status == "verified"
    assert checked.failing_since is not None
    assert checked.last_error.startswith(f"Re-check failed: Not found in DNS yet: TXT _inboxlayer.{domain.name}. "
                                         "Inboxes on this domain stop sending at ")


def test_check_domain_verified_failing_past_grace_is_failed_and_stops_sending(config, account, dns_server):
    domain = add_verified(account.user, dns_server)
    with models.db.connection_context(), models.db.atomic():
        inbox = accounts.create_inbox(account.user, "bot", domain)
    dns_server.set(f"_inboxlayer.{domain.name}", "TXT")
    domains.check_domain(domain.id)
    set_fields(domain.id, failing_since=models.utcnow() - datetime.timedelta(seconds=config["dns"]["recheck_grace"]))

    checked = domains.check_domain(domain.id)

    assert (checked.status, checked.failing_since) == ("failed", None)
    assert checked.last_error == f"Not found in DNS yet: TXT _inboxlayer.{domain.name}"
    with models.db.connection_context():
        assert models.inbox_can_send(models.Inbox.get_by_id(inbox.id)) == (
            False, f"Domain {domain.name} is not verified")


def test_check_domain_verified_records_back_within_grace_clears_failure(config, account, dns_server):
    domain = add_verified(account.user, dns_server)
    dns_server.set(f"_inboxlayer.{domain.name}", "TXT")
    assert domains.check_domain(domain.id).failing_since is not None
    publish(dns_server, domains.expected_records(domain))

    checked = domains.check_domain(domain.id)

    assert (checked.status, checked.failing_since, checked.last_error) == ("verified", None, None)


def test_check_domain_verified_dns_outage_starts_no_grace(config, account, dns_server, reconfigure):
    domain = add_verified(account.user, dns_server)
    config["dns"]["timeout"] = 0.5
    reconfigure()
    dns_server.stop()
    checked = domains.check_domain(domain.id)
    assert (checked.status, checked.failing_since) == ("verified", None)


def test_check_domains_rechecks_verified_after_recheck_interval(config, account, dns_server):
    domain = add_verified(account.user, dns_server)
    dns_server.set(f"_inboxlayer.{domain.name}", "TXT")
    assert domains.check_domains() == 0  # verified and checked moments ago: not due
    set_fields(domain.id, last_checked_at=models.utcnow() - datetime.timedelta(seconds=config["dns"]["recheck_interval"]))

    assert domains.check_domains() == 1

    assert domain_row(domain.id).failing_since is not None


def test_check_domains_rechecks_failing_verified_domain_at_check_interval(config, account, dns_server):
    domain = add_verified(account.user, dns_server)
    dns_server.set(f"_inboxlayer.{domain.name}", "TXT")
    domains.check_domain(domain.id)
    set_fields(domain.id, last_checked_at=models.utcnow() - datetime.timedelta(seconds=config["dns"]["check_interval"]))

    assert domains.check_domains() == 1  # within its grace it is checked as often as a pending one


def test_check_domains_grace_zero_fails_verified_domain_at_once(config, account, dns_server, reconfigure):
    config["dns"]["recheck_grace"] = 0
    reconfigure()
    domain = add_verified(account.user, dns_server)
    dns_server.set(f"_inboxlayer.{domain.name}", "TXT")
    assert domains.check_domain(domain.id).status == "failed"


def test_check_domain_ses_identity_gone_is_a_problem(config, account, dns_server, ses_endpoint, reconfigure):
    import boto3

    config["dns"]["recheck_grace"] = 0
    reconfigure()
    domain = add_verified(account.user, dns_server)
    boto3.client("sesv2", endpoint_url=ses_endpoint, region_name="us-east-1").delete_email_identity(
        EmailIdentity=domain.name)
    checked = domains.check_domain(domain.id)
    assert (checked.status, checked.last_error) == (
        "failed", f"Amazon SES has no identity for {domain.name}; delete the domain and add it again")
