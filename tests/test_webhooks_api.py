"""/v1/webhooks and /v1/events over HTTP (real WSGI server, real receiver on loopback verifying
with the Standard Webhooks reference library), plus the SSRF guard at save and delivery time."""
import datetime

import pytest
from standardwebhooks.webhooks import Webhook

import models
from core import webhooks
from tests.fixtures_api import ApiSession
from tests.fixtures_webhooks import add_endpoint
from tests.fixtures_webhooks import deliver_pending
from tests.helpers import make_account
from tests.helpers import wait_until


def test_webhook_create_returns_secret_once_and_crud_works(webhook_config, api, receiver):
    created = add_endpoint(api, receiver, events=["outbound.sent", "outbound.bounced"])

    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["outbound.sent", "outbound.bounced"] and created["enabled"] is True
    shown = api.get(f"/v1/webhooks/{created['id']}").json()
    assert "secret" not in shown and shown["url"] == receiver.url
    assert [w["id"] for w in api.get("/v1/webhooks").json()["data"]] == [created["id"]]

    patched = api.patch(f"/v1/webhooks/{created['id']}", json={"events": [], "enabled": False})
    assert patched.status_code == 200
    assert (patched.json()["events"], patched.json()["enabled"]) == ([], False)

    assert api.delete(f"/v1/webhooks/{created['id']}").status_code == 204
    assert api.get(f"/v1/webhooks/{created['id']}").status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"url": "ftp://example.com/"}, "url"),
    ({"url": "http://127.0.0.1:1/hook", "events": ["outbound.nope"]}, "events"),
    ({"url": "http://127.0.0.1:1/hook", "events": "outbound.sent"}, "events"),
    ({"url": "http://127.0.0.1:1/hook", "inbox": "nobody@example.com"}, "inbox"),
    ({"url": "http://127.0.0.1:1/hook", "colour": "red"}, "colour"),
    ({"url": "http://user:pw@127.0.0.1:1/hook"}, "url"),
    ({"url": "x" * 3000}, "url"),
])
def test_webhook_create_invalid_is_422_naming_the_field(webhook_config, api, body, field):
    response = api.post("/v1/webhooks", json=body)

    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith(f"{field}: ")


def test_webhook_of_another_account_is_404(webhook_config, api, api_server, receiver):
    created = add_endpoint(api, receiver)
    other = make_account(email="other@example.com", local_part="other")
    with ApiSession(api_server, other.token) as stranger:
        assert stranger.get(f"/v1/webhooks/{created['id']}").status_code == 404
        assert stranger.delete(f"/v1/webhooks/{created['id']}").status_code == 404
        assert stranger.get(f"/v1/webhooks/{created['id']}/deliveries").status_code == 404
        assert stranger.get("/v1/events").json()["data"] == []


ADDRESSES = ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "::ffff:10.0.0.1", "100.64.0.1", "0.0.0.0"]


@pytest.mark.parametrize("address", ADDRESSES)
def test_webhook_url_to_internal_address_is_refused_when_saved(config, api, address, dns_server):
    host = f"[{address}]" if ":" in address else address
    dns_server.set("internal.example.test", "AAAA" if ":" in address else "A", address)

    for url in (f"http://{host}/hook", "http://internal.example.test/hook"):
        response = api.post("/v1/webhooks", json={"url": url})

        assert response.status_code == 422, url
        assert "webhooks go to public addresses only" in response.json()["error"]["message"]
    assert api.get("/v1/webhooks").json()["data"] == []


def test_webhook_http_refused_in_production(config):
    config["server"]["environment"] = "production"
    with pytest.raises(webhooks.WebhookError, match="must use https"):
        webhooks.check_url("http://93.184.215.14/hook", config)
    assert webhooks.check_url("https://93.184.215.14/hook", config)[0] == "https"


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "169.254.169.254"])
def test_webhook_name_rebound_to_internal_address_is_refused_at_delivery(config, api, account, receiver, submit,
                                                                         dns_server, reconfigure, address):
    """DNS rebinding: the name is public when saved, internal when delivering; nothing connects."""
    dns_server.set("hooks.example.test", "A", "93.184.215.14")
    url = f"http://hooks.example.test:{receiver.server.server_port}/hook"
    response = api.post("/v1/webhooks", json={"url": url, "events": ["outbound.queued"]})
    assert response.status_code == 201, response.text
    endpoint_id = response.json()["id"]
    dns_server.set("hooks.example.test", "A", address)
    submit()

    deliver_pending()

    log = api.get(f"/v1/webhooks/{endpoint_id}/deliveries").json()["data"][0]["log"]
    assert len(log) == 1 and log[0]["status_code"] is None
    assert log[0]["error"].startswith(f"refused: hooks.example.test resolves to {address} ")
    assert receiver.requests == []
    if address == "127.0.0.1":  # the control: with loopback allowed, this very delivery arrives
        config["webhooks"].update(allow_loopback=True)
        reconfigure()
        receiver.secret = _secret_of(endpoint_id)
        _make_due(endpoint_id)
        deliver_pending()
        assert [r["verified"] for r in receiver.requests] == [True]


def _secret_of(endpoint_id):
    with models.db.connection_context():
        return models.WebhookEndpoint.get(models.WebhookEndpoint.public_id == endpoint_id).secret


def _make_due(endpoint_id):
    with models.db.connection_context():
        endpoint = models.WebhookEndpoint.get(models.WebhookEndpoint.public_id == endpoint_id)
        models.WebhookDelivery.update(next_attempt_at=models.utcnow()).where(
            models.WebhookDelivery.endpoint == endpoint).execute()


def test_webhook_replay_redelivers_with_the_same_event_id(webhook_config, api, receiver, submit):
    endpoint = add_endpoint(api, receiver, events=["outbound.queued"])
    submit()
    deliver_pending()
    assert len(receiver.events(200)) == 1
    event_id = receiver.events()[0][0]

    response = api.post(f"/v1/webhooks/{endpoint['id']}/replay", json={"event": event_id})
    assert (response.status_code, response.json()) == (202, {"replayed": 1})
    deliver_pending()

    assert receiver.events(200) == [(event_id, "outbound.queued")] * 2
    since = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)).isoformat()
    response = api.post(f"/v1/webhooks/{endpoint['id']}/replay", json={"since": since})
    assert (response.status_code, response.json()) == (202, {"replayed": 1})
    deliver_pending()
    assert receiver.events(200) == [(event_id, "outbound.queued")] * 3
    assert api.post(f"/v1/webhooks/{endpoint['id']}/replay",
                    json={"event": "evt_000000000000000000000000"}).status_code == 404


def test_webhook_test_event_reaches_only_that_endpoint_and_not_the_feed(webhook_config, api, receiver):
    endpoint = add_endpoint(api, receiver)

    response = api.post(f"/v1/webhooks/{endpoint['id']}/test")
    assert response.status_code == 202
    deliver_pending()

    assert receiver.events(200) == [(response.json()["event"], "webhook.test")]
    assert api.get("/v1/events").json()["data"] == []


def test_webhook_rotated_secret_old_and_new_both_verify(webhook_config, api, receiver):
    endpoint = add_endpoint(api, receiver)
    old = receiver.secret
    rotated = api.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != old

    api.post(f"/v1/webhooks/{endpoint['id']}/test")
    deliver_pending()

    request = receiver.requests[0]
    assert request["verified"]  # the receiver still holds the old secret
    Webhook(rotated["secret"]).verify(request["body"], request["headers"])  # and the new one verifies too
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2


def test_events_feed_is_ordered_paginated_and_filtered(webhook_config, api, account, submit):
    rows = [submit() for _ in range(3)]
    with models.db.connection_context():
        other_inbox = models.Inbox.create(user=account.user, local_part="second",
                                          address="second@" + account.address.split("@")[1])

    def page(**params):
        response = api.get("/v1/events", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    wait_until(lambda: len(page()["data"]) == 3, what="events to settle into the feed")
    first = page(limit=2)
    assert [e["outbound"] for e in first["data"]] == [r.public_id for r in rows[:2]]
    assert first["has_more"] is True
    rest = page(after=first["next_cursor"])
    assert [e["outbound"] for e in rest["data"]] == [rows[2].public_id]
    assert page(after=rest["next_cursor"])["data"] == []
    assert page(after=rest["next_cursor"])["next_cursor"] == rest["next_cursor"]
    assert len(page(type="outbound.queued")["data"]) == 3
    assert page(type="outbound.sent")["data"] == []
    assert page(inbox=other_inbox.address)["data"] == []
    assert api.get("/v1/events", params={"type": "nope"}).status_code == 422
    assert api.get("/v1/events", params={"after": "garbage"}).status_code == 422


def _redirect(handler):
    handler.send_response(302)
    handler.send_header("Location", "http://10.0.0.1/elsewhere")
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _huge(handler):
    body = b"x" * (2 * 2**20)
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    try:
        handler.wfile.write(body)
    except OSError:
        pass  # the sender stops reading at its cap and hangs up


def _drip(handler):
    import time

    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    try:
        for _ in range(60):  # one byte every half second: each read is quick, the whole is not
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.5)
    except OSError:
        pass


@pytest.mark.parametrize("respond, status, check", [
    (_redirect, None, lambda entry: entry["status_code"] == 302),
    (_huge, "delivered", lambda entry: entry["status_code"] == 200 and len(entry["response"]) == 1000),
    (_drip, None, lambda entry: entry["status_code"] is None and entry["error"].startswith("TimeoutError")
     and 14000 <= entry["latency_ms"] < 17000),
], ids=["redirect-not-followed", "body-capped", "total-deadline-15s"])
def test_webhook_receiver_misbehaving_is_bounded(webhook_config, api, receiver, respond, status, check):
    endpoint = add_endpoint(api, receiver)
    receiver.respond = respond
    api.post(f"/v1/webhooks/{endpoint['id']}/test")

    deliver_pending()

    (delivery,) = api.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"]
    assert check(delivery["log"][0]), delivery["log"]
    assert delivery["status"] == (status or "pending")  # a redirect or a timeout is retried, never followed
    assert len(receiver.requests) == 1
