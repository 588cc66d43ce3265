"""POST /v1/inboxes/{address}/send over real HTTP: the MIME it builds, the submit path it shares
with SMTP (Sent copy, OutboundEmail, relay job), validation, auth, idempotency, size and limits."""
import base64
import email
import email.policy
import json


import models
from core import accounts
from core import blobs
from core import outbox
from tests.fixtures_api import send_body
from tests.helpers import make_account


def stored_message(outbound_id):
    with models.db.connection_context():
        row = models.OutboundEmail.get(models.OutboundEmail.public_id == outbound_id)
        raw = blobs.store().read_bytes(row.message.blob_key)
    return row, raw


def content(part):
    # Text travels in canonical form (CRLF line ends, RFC 2045 2.7); compare it as text.
    return part.get_content().replace("\r\n", "\n")


def test_send_accepts_and_queues_the_message(api, account, redis_conn):
    response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(
        to=["Bob Example <bob@example.com>"], cc="carol@example.com", bcc=["dave@example.com"],
        subject="Quarterly report", text="Plain body", html="<p>HTML body</p>", reply_to="replies@example.com",
        headers={"X-Agent-Run": "run-42", "In-Reply-To": "<abc@example.com>"},
        attachments=[{"filename": "report.csv", "content": base64.b64encode(b"a,b\n1,2\n").decode()}]))
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["via"] == "api"
    assert body["recipients"] == ["bob@example.com", "carol@example.com", "dave@example.com"]
    assert body["subject"] == "Quarterly report"
    assert response.headers["Location"] == f"/v1/outbound/{body['id']}"
    row, raw = stored_message(body["id"])
    assert row.status == "queued"
    assert json.loads(row.recipients) == ["bob@example.com", "carol@example.com", "dave@example.com"]
    assert [job.args for job in outbox.relay_queue().jobs] == [(row.id,)]
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF throughout
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["From"] == account.address
    assert parsed["To"] == "Bob Example <bob@example.com>"
    assert parsed["Cc"] == "carol@example.com"
    assert parsed["Bcc"] == "dave@example.com"  # the Sent copy keeps it; the relay strips it
    assert parsed["Reply-To"] == "replies@example.com"
    assert parsed["X-Agent-Run"] == "run-42"
    assert parsed["In-Reply-To"] == "<abc@example.com>"
    assert parsed["Message-ID"] == body["message_id"]
    assert content(parsed.get_body(("plain",))) == "Plain body\n"
    assert content(parsed.get_body(("html",))) == "<p>HTML body</p>\n"
    (attachment,) = parsed.iter_attachments()
    assert attachment.get_filename() == "report.csv"
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_content() == "a,b\n1,2\n"  # attachments are bytes as given, not re-lined


def test_send_keeps_non_ascii_text_intact(api, account):
    response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(
        to="Jürgen Groß <jurgen@bücher.example>", subject="Grüße 👋", text="Schöne Grüße\n" + "x" * 2000))
    assert response.status_code == 202
    _, raw = stored_message(response.json()["id"])
    assert raw.isascii() or b"Content-Transfer-Encoding: 8bit" in raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Grüße 👋"
    assert parsed["To"].addresses[0].display_name == "Jürgen Groß"
    assert parsed["To"].addresses[0].domain == "xn--bcher-kva.example"
    assert content(parsed.get_body(("plain",))) == "Schöne Grüße\n" + "x" * 2000 + "\n"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_send_appears_in_sent_folder_and_outbound(api, account):
    sent = api.post(f"/v1/inboxes/{account.address}/send", json=send_body()).json()
    messages = api.get(f"/v1/inboxes/{account.address}/messages", params={"folder": "sent"}).json()
    assert [m["outbound_id"] for m in messages["data"]] == [sent["id"]]
    detail = api.get(f"/v1/outbound/{sent['id']}").json()
    assert detail["status"] == "queued"
    assert [e["type"] for e in detail["events"]] == ["queued"]


def test_send_inbox_address_is_case_insensitive(api, account):
    assert api.post(f"/v1/inboxes/{account.address.upper()}/send", json=send_body()).status_code == 202


INVALID_SEND_BODIES = [
    ({"subject": "x", "text": "y"}, "to"),
    ({"to": [], "text": "y"}, "to"),
    ({"to": "bob@example.com"}, "text"),
    ({"to": "not-an-address", "text": "y"}, "to[0]"),
    ({"to": "bob@localhost", "text": "y"}, "to[0]"),
    ({"to": "bob@example.com, eve@example.com", "text": "y"}, "to[0]"),
    ({"to": "bob@example.com\r\nBcc: eve@example.com", "text": "y"}, "to[0]"),
    ({"to": "Eve\r\nX-Evil: 1 <bob@example.com>", "text": "y"}, "to[0]"),
    ({"to": "ü@example.com", "text": "y"}, "to[0]"),
    ({"to": 42, "text": "y"}, "to"),
    ({"to": [42], "text": "y"}, "to[0]"),
    ({"to": "bob@example.com", "cc": ["x"], "text": "y"}, "cc[0]"),
    ({"to": "bob@example.com", "text": "y", "subject": "hi\r\nBcc: eve@example.com"}, "subject"),
    ({"to": "bob@example.com", "text": "y", "subject": "a" * 999}, "subject"),
    ({"to": "bob@example.com", "text": "y", "subject": "hi\u2028Bcc: eve@example.com"}, "subject"),
    ({"to": "Eve\x85Bcc: eve@example.com <bob@example.com>", "text": "y"}, "to[0]"),
    ({"to": "bob@example.com", "text": "y", "headers": {"X-A": "1\u2029X-B: 2"}}, "headers.X-A"),
    ({"to": "bob@example.com", "text": 5}, "text"),
    ({"to": "bob@example.com", "text": "nul\x00byte"}, "text"),
    ({"to": "bob@example.com", "text": "y", "headers": {"Bcc": "eve@example.com"}}, "headers.Bcc"),
    ({"to": "bob@example.com", "text": "y", "headers": {"from": "ceo@example.com"}}, "headers.from"),
    ({"to": "bob@example.com", "text": "y", "headers": {"Content-Type": "text/html"}}, "headers.Content-Type"),
    ({"to": "bob@example.com", "text": "y", "headers": {"X-A": "1\r\nBcc: eve@example.com"}}, "headers.X-A"),
    ({"to": "bob@example.com", "text": "y", "headers": {"X-SES-CONFIGURATION-SET": "none"}},
     "headers.X-SES-CONFIGURATION-SET"),
    ({"to": "bob@example.com", "text": "y", "headers": {"x-ses-source-arn": "arn:x"}}, "headers.x-ses-source-arn"),
    ({"to": "bob@example.com", "text": "y", "headers": {"Content-Description": "x"}}, "headers.Content-Description"),
    ({"to": "bob@example.com", "text": "y", "headers": {"Sender": "ceo@example.com"}}, "headers.Sender"),
    ({"to": "bob@example.com", "text": "y", "headers": {"Received": "from evil"}}, "headers.Received"),
    ({"to": "bob@example.com", "text": "y", "headers": {"X A": "1"}}, "headers.X A"),
    ({"to": "bob@example.com", "text": "y", "headers": {"X-A:": "1"}}, "headers.X-A:"),
    ({"to": "bob@example.com", "text": "y", "headers": {"X-A": 1}}, "headers.X-A"),
    ({"to": "bob@example.com", "text": "y", "headers": ["X-A: 1"]}, "headers"),
    ({"to": "bob@example.com", "text": "y", "attachments": {"a": 1}}, "attachments"),
    ({"to": "bob@example.com", "text": "y", "attachments": [{"filename": "a.txt"}]}, "attachments[0].content"),
    ({"to": "bob@example.com", "text": "y", "attachments": [{"filename": "a.txt", "content": "!!notbase64"}]},
     "attachments[0].content"),
    ({"to": "bob@example.com", "text": "y", "attachments": [{"filename": "a\r\n.txt", "content": "YQ=="}]},
     "attachments[0].filename"),
    ({"to": "bob@example.com", "text": "y", "attachments": [{"filename": "../etc/passwd", "content": "YQ=="}]},
     "attachments[0].filename"),
    ({"to": "bob@example.com", "text": "y",
      "attachments": [{"filename": "a.txt", "content": "YQ==", "content_type": "text/plain\r\nX: 1"}]},
     "attachments[0].content_type"),
    ({"to": "bob@example.com", "text": "y",
      "attachments": [{"filename": "a.txt", "content": "YQ==", "content_type": "multipart/mixed"}]},
     "attachments[0].content_type"),
    ({"to": "bob@example.com", "text": "y", "attachments": [{"filename": "a", "content": "YQ==", "x": 1}]},
     "attachments[0].x"),
    ({"to": "bob@example.com", "text": "y", "from": "ceo@example.com"}, "from"),
    ({"to": [f"r{i}@example.com" for i in range(101)], "text": "y"}, "to"),
]


def test_send_invalid_field_is_422_naming_it(api, account, subtests):
    for body, field in INVALID_SEND_BODIES:
        with subtests.test(field=field, body=json.dumps(body)[:120]):
            response = api.post(f"/v1/inboxes/{account.address}/send", json=body)
            assert response.status_code == 422
            error = response.json()["error"]
            assert error["code"] == "invalid_request"
            assert error["message"].startswith(f"{field}: ")
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 0
        assert models.sends_today(account.user) == 0


MALFORMED_BODIES = [
    (b"", {"Content-Type": "application/json"}),
    (b"{not json", {"Content-Type": "application/json"}),
    (b"[1, 2]", {"Content-Type": "application/json"}),
    (b"\xff\xfe", {"Content-Type": "application/json"}),
    (b"[" * 100000, {"Content-Type": "application/json"}),
    (b"to=bob@example.com", {"Content-Type": "application/x-www-form-urlencoded"}),
]


def test_send_malformed_body_is_400(api, account, subtests):
    for data, headers in MALFORMED_BODIES:
        with subtests.test(body=data[:40]):
            response = api.post(f"/v1/inboxes/{account.address}/send", data=data, headers=headers)
            assert response.status_code == 400
            assert response.json()["error"]["code"] == "invalid_json"


def test_send_exactly_100_recipients_is_accepted(api, account):
    recipients = [f"r{i}@example.com" for i in range(100)]
    # 49 in To: SES counts the To/Cc addresses with each batch (test_smtp_headers.py); the rest in Bcc.
    response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to=recipients[:49], bcc=recipients[49:]))
    assert response.status_code == 202
    assert len(response.json()["recipients"]) == 100


def test_send_duplicate_recipients_count_once(api, account):
    response = api.post(f"/v1/inboxes/{account.address}/send",
                        json=send_body(to=["bob@example.com", "BOB@example.com"], cc="bob@EXAMPLE.com"))
    assert response.status_code == 202
    assert response.json()["recipients"] == ["bob@example.com"]
    assert response.headers["X-RateLimit-Remaining"] == "499"


def test_send_without_valid_token_is_401(anonymous_api, account, subtests):
    for header in (None, "Basic abc", "Bearer", "Bearer il_wrong", "Bearer not-a-token", "Bearer " + "il_" + "x" * 500,
                   f"Bearer {account.token}x", f"Token {account.token}"):
        with subtests.test(header=header):
            headers = {"Authorization": header} if header else {}
            response = anonymous_api.post(f"/v1/inboxes/{account.address}/send", json=send_body(), headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="inboxlayer"'


def test_send_with_revoked_token_is_refused_immediately(api, account):
    assert api.post(f"/v1/inboxes/{account.address}/send", json=send_body()).status_code == 202
    with models.db.connection_context(), models.db.atomic():
        assert accounts.revoke_token(account.user, account.token_row.id)
    response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body())
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Invalid or revoked API token"


def test_send_from_someone_elses_inbox_is_404(api, account):
    with models.db.connection_context():
        other = make_account(email="other@example.com", local_part="other")
    for address in (other.address, "nobody@inboxlayer.dev"):
        response = api.post(f"/v1/inboxes/{address}/send", json=send_body())
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "inbox_not_found",
                                             "message": f"No inbox {address!r} in this account"}}
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 0


def test_send_from_unverified_custom_domain_is_403(api, account):
    with models.db.connection_context(), models.db.atomic():
        domain = models.Domain.create(user=account.user, name="agents.example.org", verification_token="t")
        accounts.create_inbox(account.user, "bot", domain)
    response = api.post("/v1/inboxes/bot@agents.example.org/send", json=send_body())
    assert response.status_code == 403
    assert response.json()["error"] == {"code": "domain_not_verified",
                                        "message": "Domain agents.example.org is not verified"}


def test_send_idempotency_key_replays_the_first_result(api, account, redis_conn):
    headers = {"Idempotency-Key": "order-1234"}
    first = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(), headers=headers)
    # Same content, different key order and whitespace: the same request.
    again = api.post(f"/v1/inboxes/{account.address}/send", headers={**headers, "Content-Type": "application/json"},
                     data=json.dumps({"text": "Hi Bob", "subject": "Hello", "to": ["bob@example.com"]}, indent=3))
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 1
        assert models.sends_today(account.user) == 1
    assert len(outbox.relay_queue().jobs) == 1


def test_send_idempotency_key_with_another_body_is_409(api, account):
    headers = {"Idempotency-Key": "order-1234"}
    assert api.post(f"/v1/inboxes/{account.address}/send", json=send_body(), headers=headers).status_code == 202
    response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(text="changed"), headers=headers)
    assert response.status_code == 409
    assert response.json()["error"] == {"code": "idempotency_conflict",
                                        "message": "This Idempotency-Key was used with a different request"}


def test_send_idempotency_keys_are_per_account(api, api_server, account):
    from tests.fixtures_api import ApiSession

    with models.db.connection_context():
        other = make_account(email="other@example.com", local_part="other")
    headers = {"Idempotency-Key": "shared-key"}
    first = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(), headers=headers)
    with ApiSession(api_server, other.token) as other_api:
        second = other_api.post(f"/v1/inboxes/{other.address}/send", json=send_body(), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]


def test_send_bad_idempotency_key_is_400(api, account, subtests):
    for key in ("", "x" * 256, "schlüssel", "a\tb"):
        with subtests.test(key=key[:20]):
            response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(),
                                headers={"Idempotency-Key": key.encode("utf-8")})
            assert response.status_code == 400
            assert response.json()["error"]["code"] == "invalid_idempotency_key"


def test_send_message_over_size_limit_is_413(api, account, config):
    limit = config["smtp"]["max_message_size"]
    attachment = base64.b64encode(b"\0" * (limit // 4 * 3 + 1000)).decode()
    response = api.post(f"/v1/inboxes/{account.address}/send",
                        json=send_body(attachments=[{"filename": "big.bin", "content": attachment}]))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "message_too_large"
    assert response.json()["error"]["message"].startswith("Message size at least ")
    assert f"exceeds the limit of {limit} bytes (25 MB). The limit applies to the message as sent, i.e. after " \
           "base64 encoding of attachments" in response.json()["error"]["message"]
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 0
        assert models.sends_today(account.user) == 0


def test_send_request_body_over_limit_is_413_json(api, account, config):
    too_big = b"x" * (config["smtp"]["max_message_size"] * 2 + 1)
    response = api.post(f"/v1/inboxes/{account.address}/send", data=too_big,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"error": {"code": "payload_too_large", "message": (
        f"Request body over {len(too_big) - 1} bytes; a message may be at most 25 MB as sent, i.e. after base64 "
        "encoding of attachments")}}


def test_send_concurrent_retries_with_one_idempotency_key_send_once(api_server, account):
    from concurrent.futures import ThreadPoolExecutor

    from tests.fixtures_api import ApiSession

    def attempt(_):
        with ApiSession(api_server, account.token) as session:
            return session.post(f"/v1/inboxes/{account.address}/send", json=send_body(),
                                headers={"Idempotency-Key": "racing-retry"})

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(attempt, range(6)))
    assert [r.status_code for r in responses] == [202] * 6
    assert len({r.json()["id"] for r in responses}) == 1
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 1
        assert models.Message.select().count() == 1
        assert models.sends_today(account.user) == 1


def test_send_from_header_carries_the_inbox_display_name(api, account, subtests):
    for display_name in ("Support Bot", "Büro, Agent", 'The "Agent" @ Work', "代理人" * 30):
        with subtests.test(display_name=display_name):
            with models.db.connection_context():
                models.Inbox.update(display_name=display_name).where(models.Inbox.id == account.inbox.id).execute()
            response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body())
            assert response.status_code == 202, response.text
            _, raw = stored_message(response.json()["id"])
            (sender,) = email.message_from_bytes(raw, policy=email.policy.default)["From"].addresses
            assert sender.addr_spec == account.address
            assert sender.display_name.replace(" ", "") == display_name.replace(" ", "")
