"""Reading endpoints over real HTTP: outbound status and lists (filters, cursor pagination),
inboxes, stored messages and their raw .eml; every error is JSON; accounts are isolated."""
import threading

import requests
from werkzeug.serving import make_server

import models
from tests.fixtures_api import ApiSession
from tests.fixtures_api import send_body
from tests.helpers import make_account


def send(api, account, **fields):
    response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(**fields))
    assert response.status_code == 202, response.text
    return response.json()


def test_outbound_get_shows_status_and_events(api, account):
    sent = send(api, account, subject="Status check")
    with models.db.connection_context(), models.db.atomic():
        row = models.OutboundEmail.get(models.OutboundEmail.public_id == sent["id"])
        models.OutboundEmail.update(status="sent", ses_message_id="ses-123", attempts=1).where(
            models.OutboundEmail.id == row.id).execute()
        models.OutboundEvent.create(outbound=row, type="sent", detail='{"ses_message_id": "ses-123"}')
    detail = api.get(f"/v1/outbound/{sent['id']}").json()
    assert detail["status"] == "sent"
    assert detail["ses_message_id"] == "ses-123"
    assert detail["subject"] == "Status check"
    assert [(e["type"], e["detail"]) for e in detail["events"]] == [
        ("queued", {"via": "api", "recipients": 1, "size": detail["events"][0]["detail"]["size"]}),
        ("sent", {"ses_message_id": "ses-123"})]


def test_outbound_list_filters_and_paginates(api, account):
    ids = [send(api, account, subject=f"n{i}")["id"] for i in range(5)]
    with models.db.connection_context():
        models.OutboundEmail.update(status="failed").where(models.OutboundEmail.public_id == ids[1]).execute()
    seen, cursor = [], None
    while True:
        page = api.get("/v1/outbound", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [row["id"] for row in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == list(reversed(ids))
    failed = api.get("/v1/outbound", params={"status": "failed"}).json()
    assert [row["id"] for row in failed["data"]] == [ids[1]]
    by_inbox = api.get("/v1/outbound", params={"inbox": account.address.upper(), "limit": 100}).json()
    assert len(by_inbox["data"]) == 5


def test_outbound_list_bad_filters_are_422(api, account, subtests):
    for params, field in [({"status": "lost"}, "status"), ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"),
                          ({"limit": "x"}, "limit"), ({"limit": "٣"}, "limit"), ({"cursor": "garbage"}, "cursor"),
                          ({"cursor": "aWQ6LTE"}, "cursor"), ({"inbox": "nobody@inboxlayer.dev"}, "inbox"),
                          ({"inbox": "a\x00b"}, "inbox")]:
        with subtests.test(params=params):
            response = api.get("/v1/outbound", params=params)
            assert response.status_code == 422
            assert response.json()["error"]["message"].startswith(f"{field}: ")


def test_accounts_are_isolated(api, api_server, account):
    with models.db.connection_context():
        other = make_account(email="other@example.com", local_part="other")
    mine = send(api, account)
    with ApiSession(api_server, other.token) as other_api:
        assert other_api.get(f"/v1/outbound/{mine['id']}").status_code == 404
        assert other_api.get("/v1/outbound").json()["data"] == []
        assert other_api.get(f"/v1/inboxes/{account.address}/messages").status_code == 404
        message_id = mine["sent_message_id"]
        assert other_api.get(f"/v1/inboxes/{account.address}/messages/{message_id}").status_code == 404
        assert other_api.get(f"/v1/inboxes/{other.address}/messages/{message_id}").status_code == 404
        assert other_api.get(f"/v1/inboxes/{other.address}/messages/{message_id}.eml").status_code == 404
        assert [i["address"] for i in other_api.get("/v1/inboxes").json()["data"]] == [other.address]


def test_inboxes_list_and_create(api, account):
    created = api.post("/v1/inboxes", json={"name": "Support.Bot", "display_name": "Support"})
    assert created.status_code == 201
    assert created.json()["address"] == "support.bot@inboxlayer.dev"
    assert created.json()["can_send"] is True
    assert created.headers["Location"] == "/v1/inboxes/support.bot@inboxlayer.dev"
    listed = [i["address"] for i in api.get("/v1/inboxes").json()["data"]]
    assert listed == ["support.bot@inboxlayer.dev", account.address]
    taken = api.post("/v1/inboxes", json={"name": "support.bot"})
    assert taken.status_code == 409
    assert taken.json()["error"] == {"code": "inbox_exists",
                                     "message": "The address support.bot@inboxlayer.dev is already taken"}


def test_inboxes_create_invalid_is_422(api, account, subtests):
    for body, field in [({}, "name"), ({"name": ""}, "name"), ({"name": "a b"}, "name"), ({"name": "-x"}, "name"),
                        ({"name": "x" * 65}, "name"), ({"name": 5}, "name"), ({"name": "x", "domain": "nope"}, "domain"),
                        ({"name": "x", "domain": "someone-elses.example"}, "domain"), ({"name": "x", "extra": 1}, "extra")]:
        with subtests.test(body=body):
            response = api.post("/v1/inboxes", json=body)
            assert response.status_code == 422
            assert response.json()["error"]["message"].startswith(f"{field}: ")


def test_messages_list_get_and_raw(api, account):
    sent = send(api, account, subject="Stored", text="plain part", html="<b>html part</b>",
                bcc="secret@example.com",
                attachments=[{"filename": "a.txt", "content": "aGVsbG8=", "content_type": "text/plain"}])
    listed = api.get(f"/v1/inboxes/{account.address}/messages").json()
    (item,) = listed["data"]
    assert item["outbound_id"] == sent["id"]
    assert item["subject"] == "Stored"
    assert api.get(f"/v1/inboxes/{account.address}/messages", params={"folder": "inbox"}).json()["data"] == []
    detail = api.get(f"/v1/inboxes/{account.address}/messages/{item['id']}").json()
    assert detail["text"].replace("\r\n", "\n") == "plain part\n"
    assert detail["html"].replace("\r\n", "\n") == "<b>html part</b>\n"
    assert detail["attachments"] == [{"filename": "a.txt", "content_type": "text/plain", "size": 5}]
    assert {"name": "Bcc", "value": "secret@example.com"} in detail["headers"]
    raw = api.get(detail["raw_url"])
    assert raw.status_code == 200
    assert raw.headers["Content-Type"] == "message/rfc822"
    assert raw.content.startswith(b"From: agent@inboxlayer.dev\r\n")
    assert len(raw.content) == item["size"]


def test_unknown_routes_and_methods_are_json(api, account, subtests):
    cases = [("GET", "/v1/nothing", 404, "not_found"), ("GET", "/v1/", 404, "not_found"),
             ("DELETE", "/v1/outbound", 405, "method_not_allowed"), ("PUT", "/v1/inboxes", 405, "method_not_allowed"),
             ("GET", f"/v1/inboxes/{account.address}/send", 405, "method_not_allowed"),
             ("GET", f"/v1/inboxes/{account.address}/messages/-1", 404, "not_found"),
             ("GET", "/v1/outbound/ob_%00", 404, "outbound_not_found"),
             ("GET", "/v1/inboxes/%00/messages", 404, "inbox_not_found")]
    for method, path, status, code in cases:
        with subtests.test(method=method, path=path):
            response = api.request(method, path)
            assert response.status_code == status
            assert response.headers["Content-Type"] == "application/json"
            assert response.json()["error"]["code"] == code
    allowed = api.delete("/v1/outbound").headers["Allow"]
    assert allowed == "GET, HEAD, OPTIONS"


def test_api_without_redis_is_503_not_500(config, account):
    from webapp import create_app

    broken = {**config, "redis": {**config["redis"], "url": "redis://127.0.0.1:1/0"}, "TESTING": True}
    server = make_server("127.0.0.1", 0, create_app(broken), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        response = requests.post(f"http://127.0.0.1:{server.server_port}/v1/inboxes/{account.address}/send",
                                 json=send_body(), headers={"Authorization": f"Bearer {account.token}"}, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "temporary_failure"
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 0
