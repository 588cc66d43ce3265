"""Webhook deliveries over real parts: SMTP in, the worker process, moto SES, signed SNS events,
a real receiver on loopback verifying each request with the Standard Webhooks reference library."""
import collections
import signal

import redis as redis_lib

from tests.fixtures_relay import make_message
from tests.fixtures_relay import outbound
from tests.fixtures_relay import ses_event
from tests.fixtures_webhooks import add_endpoint
from tests.helpers import wait_until
from tests.test_events_sns import BOUNCE


def _deliveries(api, endpoint_id):
    response = api.get(f"/v1/webhooks/{endpoint_id}/deliveries")
    assert response.status_code == 200
    return response.json()["data"]


def test_webhook_smtp_send_then_bounce_reaches_receiver_and_feed_once_by_id(
        webhook_config, api, account, receiver, smtp_client, start_worker, sns):
    add_endpoint(api, receiver)
    client = smtp_client(account.address, account.token)
    client.sendmail(account.address, ["rcpt@example.com"], make_message(account.address))
    start_worker()
    feed_row = wait_until(lambda: api.get("/v1/outbound").json()["data"], what="the outbound row")[0]
    row_id = outbound_id_of(feed_row["id"])
    wait_until(lambda: outbound(row_id).status == "sent", what="the relay")

    published = sns.publish(ses_event("Bounce", outbound(row_id), **BOUNCE))
    assert published.status_code == 200

    wanted = ["outbound.queued", "outbound.sent", "outbound.bounced"]
    wait_until(lambda: {t for _, t in receiver.events()} >= set(wanted), timeout=30,
               what="the three events at the receiver")
    assert all(r["verified"] for r in receiver.requests), [r["payload"] for r in receiver.requests]
    ids_by_type = collections.defaultdict(set)
    for event_id, event_type in receiver.events():
        ids_by_type[event_type].add(event_id)
    assert {t: len(ids) for t, ids in ids_by_type.items()} == {t: 1 for t in wanted}  # repeats only with one id
    bounced = next(r["payload"] for r in receiver.requests if r["payload"]["type"] == "outbound.bounced")
    assert bounced["data"]["bounce"] == {
        "type": "Permanent", "sub_type": "NoEmail",
        "recipients": [{"email": "rcpt@example.com", "status": "5.1.1", "action": "failed",
                        "diagnostic": "smtp; 550 5.1.1 <rcpt@example.com>: user unknown"}]}
    assert bounced["data"]["status"] == "bounced" and bounced["outbound"] == feed_row["id"]
    assert bounced["inbox"] == account.address and bounced["account"] == account.user.email

    feed = wait_until(lambda: _feed_if_complete(api, 3), what="the feed to show the three events")
    assert [(e["id"], e["type"]) for e in feed] == [(next(iter(ids_by_type[t])), t) for t in wanted]


def outbound_id_of(public_id):
    import models

    with models.db.connection_context():
        return models.OutboundEmail.get(models.OutboundEmail.public_id == public_id).id


def _feed_if_complete(api, count):
    data = api.get("/v1/events").json()["data"]
    return data if len(data) >= count else None


def test_webhook_500_three_times_then_200_is_delivered_on_the_fourth_attempt(
        webhook_config, api, account, receiver, submit, start_worker):
    endpoint = add_endpoint(api, receiver, events=["outbound.queued"])
    receiver.script = [500, 500, 500]
    submit()
    start_worker()

    delivery = wait_until(lambda: [d for d in _deliveries(api, endpoint["id"]) if d["status"] == "delivered"],
                          timeout=40, interval=0.5, what="delivery after three 500s")[0]

    assert delivery["attempts"] == 4
    assert [entry["status_code"] for entry in delivery["log"]] == [500, 500, 500, 200]
    assert [entry["attempt"] for entry in delivery["log"]] == [1, 2, 3, 4]
    assert all(entry["latency_ms"] >= 0 for entry in delivery["log"])
    assert delivery["log"][-1]["response"] == '{"received": true}'
    assert [r["status"] for r in receiver.requests] == [500, 500, 500, 200]
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {delivery["event"]}
    assert all(r["verified"] for r in receiver.requests)


def test_webhook_worker_sigkilled_mid_delivery_and_redis_flushed_still_delivered(
        webhook_config, api, account, receiver, submit, start_worker, config):
    import threading

    endpoint = add_endpoint(api, receiver, events=["outbound.queued"])
    receiver.hold = threading.Event()
    submit()
    first = start_worker()
    wait_until(lambda: receiver.requests, timeout=30, what="the worker to be mid-delivery")

    first.signal(signal.SIGKILL)
    first.wait(10)
    _flush_redis(config["redis"]["prefix"])
    receiver.hold.set()
    receiver.hold = None
    start_worker()

    delivered = wait_until(lambda: [d for d in _deliveries(api, endpoint["id"]) if d["status"] == "delivered"],
                           timeout=60, interval=0.5, what="the delivery after the kill and the flush")[0]
    assert delivered["attempts"] == 2
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {delivered["event"]}
    assert all(r["verified"] for r in receiver.requests)


def _flush_redis(prefix):
    """Everything this test's deployment had in Redis (its prefix only: other test runs share it)."""
    from tests.conftest import REDIS_URL

    client = redis_lib.Redis.from_url(REDIS_URL)
    keys = [k for pattern in (f"{prefix}:*", f"rq:*{prefix}-*") for k in client.scan_iter(pattern, count=1000)]
    assert keys  # the queue and the worker's keys were there
    client.delete(*keys)


def test_webhook_410_disables_the_endpoint(webhook_config, api, account, receiver, submit, start_worker):
    endpoint = add_endpoint(api, receiver, events=["outbound.queued", "outbound.sent"])
    receiver.script = [410]
    submit()
    start_worker()

    disabled = wait_until(lambda: (lambda e: e if not e["enabled"] else None)(
        api.get(f"/v1/webhooks/{endpoint['id']}").json()), timeout=30, what="the endpoint to be disabled")

    assert disabled["disabled_reason"] == "the receiver answered 410 Gone"
    wait_until(lambda: {d["status"] for d in _deliveries(api, endpoint["id"])} == {"failed"},
               what="its deliveries to fail")
    assert len(receiver.requests) == 1  # nothing more is sent to a disabled endpoint


def test_webhook_receivers_that_hang_leave_slots_for_mail(webhook_config, api, account, receiver, submit,
                                                          start_worker):
    """A worker with 2 slots gives deliveries at most 1: two deliveries to a hanging receiver hold one
    slot (the second waits), and a message submitted meanwhile is relayed at once on the other."""
    import threading

    webhook_config["relay"]["concurrency"] = 2
    add_endpoint(api, receiver, events=["outbound.queued"])
    receiver.hold = threading.Event()
    submit(), submit()
    start_worker()
    wait_until(lambda: receiver.requests, timeout=30, what="the first delivery to hang")
    try:
        mail = submit()
        wait_until(lambda: outbound(mail.id).status == "sent", timeout=10, interval=0.2,
                   what="the message relayed while the receiver hangs")
        assert len(receiver.requests) == 1  # the second delivery waits for the delivery slot
    finally:
        receiver.hold.set()
