"""Dashboard > Webhooks: add an endpoint (secret shown once), SSRF refusal in the form, the
delivery log after a real delivery to a loopback receiver, send test event, replay, disable, delete."""
import re

import models
from tests.fixtures_webhooks import deliver_pending


def _secret(page):
    return re.search(r'id="new-secret-value"[^>]*>(whsec_[^<]+)<', page).group(1)


def _endpoint_id():
    with models.db.connection_context():
        return models.WebhookEndpoint.select().order_by(models.WebhookEndpoint.id.desc()).get().public_id


def test_web_webhook_add_shows_secret_once_then_test_event_shows_in_the_log(web, webhook_config, receiver):
    response = web.post("/account/webhooks/", {"url": receiver.url, "inbox": "0",
                                               "events": ["outbound.sent", "outbound.bounced"]},
                        page="/account/webhooks/")
    assert response.status_code == 201
    page = response.get_data(as_text=True)
    receiver.secret = _secret(page)
    assert response.headers["Cache-Control"] == "no-store"
    listing = web.get("/account/webhooks/").get_data(as_text=True)
    assert receiver.url in listing and "whsec_" not in listing
    assert "outbound.sent, outbound.bounced" in listing
    endpoint_id = _endpoint_id()

    sent = web.post(f"/account/webhooks/{endpoint_id}/test", page="/account/webhooks/")
    assert sent.status_code == 302
    deliver_pending()

    assert [t for _, t in receiver.events(200)] == ["webhook.test"]
    log = web.get(f"/account/webhooks/{endpoint_id}").get_data(as_text=True)
    assert receiver.events()[0][0] in log and "delivered" in log and "200" in log

    replayed = web.post(f"/account/webhooks/{endpoint_id}/replay", {"event": receiver.events()[0][0]},
                        page="/account/webhooks/")
    assert replayed.status_code == 302
    deliver_pending()
    assert len(receiver.events(200)) == 2 and len({i for i, _ in receiver.events()}) == 1


def test_web_webhook_internal_url_is_refused_in_the_form(web, config):
    response = web.post("/account/webhooks/", {"url": "http://169.254.169.254/latest/meta-data/", "inbox": "0"},
                        page="/account/webhooks/")

    assert response.status_code == 422
    assert "link-local" in response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.WebhookEndpoint.select().count() == 0


def test_web_webhook_disable_and_delete(web, webhook_config, receiver):
    web.post("/account/webhooks/", {"url": receiver.url, "inbox": "0"}, page="/account/webhooks/")
    endpoint_id = _endpoint_id()

    assert web.post(f"/account/webhooks/{endpoint_id}/enabled", {"enabled": "0"},
                    page="/account/webhooks/").status_code == 302
    with models.db.connection_context():
        assert models.WebhookEndpoint.get(models.WebhookEndpoint.public_id == endpoint_id).enabled is False
    assert web.post(f"/account/webhooks/{endpoint_id}/delete", page="/account/webhooks/").status_code == 302
    assert web.get(f"/account/webhooks/{endpoint_id}").status_code == 404


def test_web_webhook_of_another_account_is_404(web, web_factory, config, webhook_config, receiver):
    from tests.fixtures_web import logged_in_user

    web.post("/account/webhooks/", {"url": receiver.url, "inbox": "0"}, page="/account/webhooks/")
    endpoint_id = _endpoint_id()
    stranger = logged_in_user(web_factory, config, "stranger@example.com")

    assert stranger.get(f"/account/webhooks/{endpoint_id}").status_code == 404
    assert stranger.post(f"/account/webhooks/{endpoint_id}/delete", page="/account/webhooks/").status_code == 404
