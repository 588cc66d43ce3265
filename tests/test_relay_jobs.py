"""The relay job against the SES stand-in (moto over HTTP), Redis and the database."""
import datetime
import io
import threading

import models
from core import accounts
import settings
from smtpd_worker import jobs
from smtpd_worker import periodic
from core import outbox
from smtpd_worker import transport
from core import submit as core_submit
from tests.fixtures_relay import events_of
from tests.fixtures_relay import make_message
from tests.fixtures_relay import outbound
from tests.fixtures_relay import outcomes
from tests.fixtures_relay import relay_until
from tests.fixtures_relay import run_worker_burst
from tests.fixtures_relay import throttle_response
from tests.helpers import free_port
from tests.helpers import wait_until



def test_relay_outbound_sends_bytes_without_bcc(relay_config, account, submit, ses_sent):
    raw = make_message(account.address, to="to@example.com", bcc="hidden@example.com")
    row = submit(raw, recipients=["to@example.com", "hidden@example.com"])

    sent_row = relay_until(row.id)

    [sent] = ses_sent()
    expected = raw.replace(b"Bcc: hidden@example.com\r\n", b"")
    assert sent["raw_data"].encode() == expected
    assert sent["source"] == account.address
    assert "hidden@example.com" in sent["destinations"]
    assert sent_row.ses_message_id == sent["id"]
    assert sent_row.attempts == 1
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "sent"]


def test_relay_outbound_throttled_then_succeeds(relay_config, account, submit, ses_sent):
    # SES throttling cannot be provoked in moto: answer the first two calls with SES's 429 from a
    # botocore hook on the real client. The job runs in this process (in-process burst worker).
    calls = []

    def throttle_twice(request, **kwargs):
        calls.append(request.url)
        if len(calls) <= 2:
            return throttle_response(request)
        return None

    transport.client().meta.events.register("before-send.sesv2.SendEmail", throttle_twice)
    row = submit()

    sent_row = relay_until(row.id, timeout=30)

    assert len(calls) == 3
    assert len(ses_sent()) == 1
    assert sent_row.attempts == 3
    types = [t for t, _ in events_of(row.id)]
    assert types == ["queued", "attempt", "retry", "attempt", "retry", "attempt", "sent"]
    retry = [d for t, d in events_of(row.id) if t == "retry"][0]
    assert retry["code"] == "TooManyRequestsException"
    assert retry["message"].startswith(f"retry scheduled in {retry['delay']} s: TooManyRequestsException")


def test_relay_outbound_throttled_past_max_attempts_fails_once(relay_config, account, submit, ses_sent, reconfigure):
    relay_config["relay"]["max_attempts"] = 2
    reconfigure()
    transport.client().meta.events.register("before-send.sesv2.SendEmail",
                                         lambda request, **kw: throttle_response(request))
    row = submit()

    failed = relay_until(row.id, statuses=("failed",), timeout=30)

    assert ses_sent() == []
    assert failed.attempts == 2
    assert failed.last_error.startswith("gave up after 2 attempts: TooManyRequestsException")
    types = [t for t, _ in events_of(row.id)]
    assert types == ["queued", "attempt", "retry", "attempt", "failed"]


def test_relay_outbound_rejected_sender_fails_without_retry(relay_config, account, ses_sent):
    # The domain is verified in our database but not at SES: SES (moto) answers MessageRejected.
    with models.db.connection_context():
        domain = models.Domain.create(user=account.user, name="unverified.example", status="verified",
                                      verification_token="t")
        inbox = accounts.create_inbox(account.user, "bot", domain)
    row = core_submit.submit(account.user, inbox, inbox.address, ["rcpt@example.com"],
                            io.BytesIO(make_message(inbox.address)), via="api")

    failed = relay_until(row.id, statuses=("failed",))

    assert ses_sent() == []
    assert failed.attempts == 1
    assert failed.last_error == "MessageRejected: Did not have authority to send from email bot@unverified.example"
    [(_, detail)] = [(t, d) for t, d in events_of(row.id) if t == "failed"]
    assert detail["code"] == "MessageRejected"
    assert detail["retryable"] is False


def test_relay_outbound_run_again_after_sent_sends_nothing(relay_config, account, submit, ses_sent):
    row = submit()
    relay_until(row.id)

    assert jobs.relay_outbound(row.id) == "skipped"

    assert len(ses_sent()) == 1
    assert outbound(row.id).attempts == 1


def test_relay_outbound_concurrent_jobs_send_once(relay_config, account, submit, ses_sent):
    row = submit()
    results = []
    barrier = threading.Barrier(4)

    def run():
        barrier.wait()
        results.append(jobs.relay_outbound(row.id))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert sorted(results) == ["sent", "skipped", "skipped", "skipped"]
    assert len(ses_sent()) == 1
    assert outbound(row.id).status == "sent"


def test_reconcile_stale_after_redis_lost_jobs_relays_each_once(relay_config, account, submit, ses_sent, redis_conn):
    rows = [submit() for _ in range(3)]
    # Only this test's keys: the queue and its jobs (the Redis is shared with other test runs).
    lost = list(redis_conn.scan_iter(f"rq:*{outbox.relay_queue_name()}*"))
    assert lost
    redis_conn.delete(*lost)
    run_worker_burst()
    assert ses_sent() == []

    requeued = []
    wait_until(lambda: requeued.append(jobs.reconcile_stale()) or sum(requeued) >= 3,
               what="reconciler to find the stuck rows")
    assert sum(requeued) == 3
    for row in rows:
        relay_until(row.id)

    assert sorted(m["id"] for m in ses_sent()) == sorted(outbound(r.id).ses_message_id for r in rows)
    assert outcomes([r.id for r in rows]) == {r.id: ["sent"] for r in rows}
    assert jobs.reconcile_stale() == 0


def test_reconcile_stale_leaves_waiting_jobs_alone(relay_config, account, submit):
    submit()
    later = models.utcnow() + datetime.timedelta(seconds=60)
    assert jobs.reconcile_stale(now=later) == 0


def test_strip_for_relay_removes_folded_bcc_only_in_header_section():
    raw = (b"From: a@inboxlayer.dev\r\nBCC : x@example.com,\r\n y@example.com\r\nTo: b@example.com\r\n"
           b"Resent-Bcc: z@example.com\r\n\r\nBcc: stays in the body\r\n")
    assert transport.strip_for_relay(io.BytesIO(raw)) == (
        b"From: a@inboxlayer.dev\r\nTo: b@example.com\r\n\r\nBcc: stays in the body\r\n")


def test_strip_for_relay_removes_ses_control_headers():
    """SES would obey these: another identity's ARN, or a configuration set that skips our events."""
    raw = (b"X-SES-SOURCE-ARN: arn:aws:ses:us-east-1:1:identity/victim.example\r\nFrom: a@inboxlayer.dev\r\n"
           b"x-ses-configuration-set: no-events\r\nX-SES-MESSAGE-TAGS: a=b,\r\n c=d\r\n"
           b"X-Sesame: kept\r\n\r\nX-SES-SOURCE-ARN: body text stays\r\n")
    assert transport.strip_for_relay(io.BytesIO(raw)) == (
        b"From: a@inboxlayer.dev\r\nX-Sesame: kept\r\n\r\nX-SES-SOURCE-ARN: body text stays\r\n")


def test_relay_outbound_during_shutdown_hands_row_back_before_calling_ses(relay_config, account, submit, ses_sent,
                                                                          redis_conn):
    row = submit()
    redis_conn.delete(outbox.relay_queue().key)  # forget submit's enqueue: the release must enqueue again
    jobs.SHUTDOWN.set()  # what the worker's SIGTERM handler sets
    try:
        assert jobs.relay_outbound(row.id) == "released"
    finally:
        jobs.SHUTDOWN.clear()

    released = outbound(row.id)
    assert (released.status, released.attempts, released.next_attempt_at) == ("queued", 0, None)
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "released"]
    assert ses_sent() == []
    assert outbox.relay_queue().job_ids == [outbox.relay_job_id(row.id)]
    relay_until(row.id)
    assert len(ses_sent()) == 1


def test_relay_outbound_ses_unreachable_then_back_retries_and_sends(relay_config, account, submit, ses_sent,
                                                                    reconfigure):
    endpoint = relay_config["ses"]["endpoint_url"]
    relay_config["ses"]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    reconfigure()
    transport.reset_client()
    row = submit()
    run_worker_burst()
    waiting = outbound(row.id)
    assert (waiting.status, waiting.attempts) == ("sending", 1)
    [(_, retry)] = [(t, d) for t, d in events_of(row.id) if t == "retry"]
    assert retry["code"] == "EndpointConnectionError"

    relay_config["ses"]["endpoint_url"] = endpoint  # SES is back
    reconfigure()
    transport.reset_client()
    sent = relay_until(row.id)

    assert sent.attempts == 2
    assert [m["id"] for m in ses_sent()] == [sent.ses_message_id]


def test_relay_outbound_25_mb_message_reaches_ses_intact(relay_config, account, submit, ses_sent):
    size = 26214400  # bytes: the advertised SIZE limit
    head = make_message(account.address, body="")
    line = b"x" * 998 + b"\r\n"
    body = line * ((size - len(head)) // len(line))
    raw = head + body + b"y" * (size - len(head) - len(body))
    assert len(raw) == size
    row = submit(raw)

    assert jobs.relay_outbound(row.id) == "sent"

    [sent] = ses_sent()
    assert len(sent["raw_data"]) == size
    assert sent["raw_data"].encode() == raw


def test_periodic_task_runs_once_per_interval_across_workers(relay_config, redis_conn):
    ran = []
    schedules = [[[60, "tests.test_relay_jobs:_count_run", 0.0]] for _ in range(3)]  # three workers
    _count_run.calls = ran

    for schedule in schedules:
        periodic.run_due(schedule, now=100.0)
    for schedule in schedules:
        periodic.run_due(schedule, now=110.0)  # within the interval: nobody runs it again

    assert ran == [1]


def _count_run():
    _count_run.calls.append(1)


def test_relay_outbound_more_recipients_than_one_ses_call_sends_batches(relay_config, account, submit, ses_sent):
    recipients = [f"r{n}@example.com" for n in range(100)]
    row = submit(make_message(account.address, to="list@example.com"), recipients=recipients)

    sent = relay_until(row.id)

    messages = ses_sent()
    assert [len(m["destinations"]) - 1 for m in messages] == [49, 49, 2]  # moto adds the To: address
    assert sorted(a for m in messages for a in m["destinations"] if a != "list@example.com") == sorted(recipients)
    assert sent.ses_message_id == messages[0]["id"]
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "batch_sent", "batch_sent", "batch_sent", "sent"]


def test_relay_outbound_batch_throttled_retries_only_unsent_batches(relay_config, account, submit, ses_sent):
    calls = []

    def throttle_second_call(request, **kwargs):
        calls.append(1)
        return throttle_response(request) if len(calls) == 2 else None

    transport.client().meta.events.register("before-send.sesv2.SendEmail", throttle_second_call)
    recipients = [f"r{n}@example.com" for n in range(60)]
    row = submit(make_message(account.address, to="list@example.com"), recipients=recipients)

    relay_until(row.id, timeout=30)

    assert len(calls) == 3  # batch 1, batch 2 throttled, then only batch 2 again
    assert sorted(len(m["destinations"]) - 1 for m in ses_sent()) == [11, 49]
    types = [t for t, _ in events_of(row.id)]
    assert types == ["queued", "attempt", "batch_sent", "retry", "attempt", "batch_sent", "sent"]


# -- quota give-back: a message that reached nobody does not count against the day -----------

def _sender_inbox(account, domain_name, verified_at_ses):
    """An inbox on a custom domain verified in our database; at SES (moto) only if asked."""
    with models.db.connection_context():
        domain = models.Domain.create(user=account.user, name=domain_name, status="verified",
                                      verification_token="t")
        inbox = accounts.create_inbox(account.user, "bot", domain)
    if verified_at_ses:
        _ses_admin().create_email_identity(EmailIdentity=domain_name)
    return inbox


def _ses_admin():
    import boto3

    ses = settings.get()["ses"]
    return boto3.client("sesv2", endpoint_url=ses["endpoint_url"], region_name=ses["region"])


def _sends_charged(user, day):
    with models.db.connection_context():
        usage = models.SendUsage.get_or_none(models.SendUsage.user == user, models.SendUsage.day == day)
        return usage.count if usage else 0


def _failed_detail(outbound_id):
    [detail] = [d for t, d in events_of(outbound_id) if t == "failed"]
    return detail


def test_relay_outbound_rejected_sender_gives_quota_back_once(relay_config, account, submit, ses_sent):
    kept = submit()  # a message that goes out keeps its charge
    inbox = _sender_inbox(account, "unverified.example", verified_at_ses=False)
    row = core_submit.submit(account.user, inbox, inbox.address, ["a@example.com", "b@example.com"],
                            io.BytesIO(make_message(inbox.address)), via="api")
    day = outbound(row.id).created_at.date()
    assert _sends_charged(account.user, day) == 3

    relay_until(kept.id)
    failed = relay_until(row.id, statuses=("failed",))

    assert failed.last_error.startswith("MessageRejected: ")
    assert _sends_charged(account.user, day) == 1
    assert _failed_detail(row.id)["quota_refunded"] == {"sends": 2, "day": day.isoformat()}
    assert jobs.relay_outbound(row.id) == "skipped"  # the job run again gives nothing back twice
    run_worker_burst()
    assert _sends_charged(account.user, day) == 1
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "failed"]
    assert len(ses_sent()) == 1


def test_relay_outbound_partly_sent_then_rejected_keeps_quota(relay_config, account, ses_sent):
    # SES accepts the first batch; then the sender's identity is deleted at SES (moto), so the
    # second batch gets SES's genuine MessageRejected. Some recipients have the message: no refund.
    inbox = _sender_inbox(account, "partial.example", verified_at_ses=True)

    def unverify_after_first_send(**kwargs):
        if len(ses_sent()) == 1:
            _ses_admin().delete_email_identity(EmailIdentity="partial.example")

    transport.client().meta.events.register("after-call.sesv2.SendEmail", unverify_after_first_send)
    recipients = [f"r{n}@example.com" for n in range(60)]
    row = core_submit.submit(account.user, inbox, inbox.address, recipients,
                            io.BytesIO(make_message(inbox.address, to="list@example.com")), via="api")
    day = outbound(row.id).created_at.date()

    failed = relay_until(row.id, statuses=("failed",))

    assert failed.last_error == "MessageRejected: Did not have authority to send from email bot@partial.example"
    assert [len(m["destinations"]) - 1 for m in ses_sent()] == [49]  # moto adds the To: address
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "batch_sent", "failed"]
    assert "quota_refunded" not in _failed_detail(row.id)
    assert _sends_charged(account.user, day) == 60


def test_relay_outbound_throttled_past_max_attempts_gives_quota_back(relay_config, account, submit, ses_sent,
                                                                     reconfigure):
    relay_config["relay"]["max_attempts"] = 2
    reconfigure()
    transport.client().meta.events.register("before-send.sesv2.SendEmail",
                                         lambda request, **kw: throttle_response(request))
    row = submit(recipients=("a@example.com", "b@example.com", "c@example.com"))
    day = outbound(row.id).created_at.date()

    relay_until(row.id, statuses=("failed",), timeout=30)

    assert ses_sent() == []
    assert _sends_charged(account.user, day) == 0
    assert _failed_detail(row.id)["quota_refunded"] == {"sends": 3, "day": day.isoformat()}


def test_relay_outbound_read_timeout_then_rejected_keeps_quota(relay_config, account, ses_sent):
    # A read timeout may hide a message SES accepted, so a later refusal proves nothing about it.
    # The timeout is raised by a botocore hook on the real client (moto never times out).
    from botocore.exceptions import ReadTimeoutError

    calls = []

    def time_out_first_call(request, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ReadTimeoutError(endpoint_url=request.url)
        return None

    transport.client().meta.events.register("before-send.sesv2.SendEmail", time_out_first_call)
    inbox = _sender_inbox(account, "unverified.example", verified_at_ses=False)
    row = core_submit.submit(account.user, inbox, inbox.address, ["a@example.com"],
                            io.BytesIO(make_message(inbox.address)), via="api")
    day = outbound(row.id).created_at.date()

    failed = relay_until(row.id, statuses=("failed",), timeout=30)

    assert failed.attempts == 2
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "retry", "attempt", "failed"]
    assert "quota_refunded" not in _failed_detail(row.id)
    assert _sends_charged(account.user, day) == 1
