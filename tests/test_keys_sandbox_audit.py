"""Issue 13, continued: sandbox keys, the mailbox simulator, Idempotency-Key over SMTP, the audit
trail, and the key choices in the CLI and the dashboard. Real SMTP server, real HTTP, real Redis
queue and relay worker, the moto SES server over HTTP, both databases."""
import datetime
import json
import re
import subprocess

import models
from core import audit
from core import keys
from core import outbox
from smtpd_worker import periodic
from tests import smtp_codes as codes
from tests.fixtures_api import ApiSession
from tests.fixtures_api import send_body
from tests.fixtures_relay import run_worker_burst
from tests.fixtures_smtp import RawClient
from tests.fixtures_smtp import message
from tests.helpers import wait_until
from tests.test_keys import auth_reply
from tests.test_keys import new_key
from tests.test_keys import smtp_send

SIMULATOR = "simulator.inboxlayer.dev"


def rows():
    with models.db.connection_context():
        return list(models.OutboundEmail.select().order_by(models.OutboundEmail.id))


def usage_today(user):
    with models.db.connection_context():
        return models.sends_today(user)


# -- sandbox keys -----------------------------------------------------------------------------------

def test_sandbox_key_20_messages_accepted_stored_never_relayed_nor_charged(smtp_client, api_server, account,
                                                                           relay_config, ses_sent):
    _, token = new_key(account, sandbox=True)
    sandbox_api = ApiSession(api_server, token)
    client = smtp_client(account.address, token)
    for n in range(10):
        code, text = smtp_send(client, account.address, to=f"person{n}@example.com")
        assert code == 250 and re.fullmatch(r"2\.0\.0 OK queued as ob_[0-9a-f]+", text), text
        accepted = sandbox_api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to=[f"p{n}@example.com"]))
        assert accepted.status_code == 202 and accepted.json()["status"] == "sandboxed"
    run_worker_burst()
    stored = rows()
    assert len(stored) == 20 and {r.status for r in stored} == {"sandboxed"}
    assert {r.via for r in stored} == {"smtp", "api"}
    with models.db.connection_context():
        assert models.Message.select().where(models.Message.folder == "sent").count() == 20
        assert {e.type for e in models.OutboundEvent.select()} == {"sandboxed"}
        public = [(e.type, json.loads(e.data)["status"]) for e in models.Event.select()]
    # What webhooks and the feed see: one outbound.sandboxed per message, never outbound.queued.
    assert public == [("outbound.sandboxed", "sandboxed")] * 20
    assert ses_sent() == []
    assert usage_today(account.user) == 0
    assert outbox.relay_queue().count == 0
    listed = sandbox_api.get("/v1/outbound", params={"status": "sandboxed", "limit": 100}).json()["data"]
    assert len(listed) == 20


def test_simulator_recipients_end_bounced_delivered_complained_without_ses(smtp_client, api, api_server, account,
                                                                         relay_config, ses_sent):
    _, sandbox_token = new_key(account, sandbox=True)
    client = smtp_client(account.address, sandbox_token)
    code, bounced_reply = smtp_send(client, account.address, to=f"bounced@{SIMULATOR}")
    assert code == 250
    delivered = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to=[f"delivered@{SIMULATOR}"]))
    complained = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to=[f"complained@{SIMULATOR}"]))
    assert delivered.status_code == complained.status_code == 202
    mixed = api.post(f"/v1/inboxes/{account.address}/send",
                     json=send_body(to=[f"delivered@{SIMULATOR}", "real@example.com"]))
    assert (mixed.status_code, mixed.json()["error"]["code"]) == (422, "simulator_mixed")
    client.mail(account.address)
    client.rcpt(f"delivered@{SIMULATOR}")
    client.rcpt("real@example.com")
    assert client.data(message(account.address)) == (550, codes.SIMULATOR_MIXED[4:].encode())

    run_worker_burst()
    by_id = {r.public_id: r for r in rows()}
    bounced = by_id[bounced_reply.rsplit(" ", 1)[1]]
    assert bounced.status == "bounced"
    assert bounced.last_error == (f"Bounce Permanent/General: bounced@{SIMULATOR}: "
                                  "smtp; 550 5.1.1 user unknown (mailbox simulator)")
    assert by_id[delivered.json()["id"]].status == "delivered"
    assert by_id[complained.json()["id"]].status == "complained"
    history = api.get(f"/v1/outbound/{bounced.public_id}").json()["events"]
    assert [e["type"] for e in history] == ["queued", "attempt", "sent", "bounced"]
    assert history[-1]["detail"]["simulated"] is True
    assert ses_sent() == []
    assert usage_today(account.user) == 0  # the simulator is never charged
    with models.db.connection_context():  # and, unlike a real bounce, neither suppresses nor pauses
        assert models.Suppression.select().count() == 0
    again = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to=[f"bounced@{SIMULATOR}"]))
    assert again.status_code == 202


# -- Idempotency-Key over SMTP ----------------------------------------------------------------------

def test_smtp_idempotency_key_twice_one_outbound_one_message_at_ses(smtp_server, account, relay_config, ses_sent):
    raw = message(account.address).replace(b"Subject: hello\r\n", b"Subject: hello\r\nIdempotency-Key: order-4711\r\n")
    replies = []
    for _ in range(2):  # two sessions, as a client retrying after a lost reply would
        client = RawClient(smtp_server)
        client.authenticate(account.address, account.token)
        client.start_data(account.address)
        replies.append(client.cmd(raw.decode() + ".\r\n" if raw.endswith(b"\r\n") else raw.decode() + "\r\n.\r\n"))
        client.close()
    first = replies[0].rsplit(" ", 1)[1]
    assert replies[0] == f"250 2.0.0 OK queued as {first}"
    assert replies[1] == codes.already_queued(first)
    assert [r.public_id for r in rows()] == [first]
    assert usage_today(account.user) == 1

    other = RawClient(smtp_server)  # the same key with another message is a conflict, as over REST
    other.authenticate(account.address, account.token)
    other.start_data(account.address)
    assert other.cmd(raw.replace(b"Hello there.", b"Something else.").decode() + ".\r\n") == \
        codes.IDEMPOTENCY_CONFLICT
    other.close()

    run_worker_burst()
    sent = ses_sent()
    assert len(sent) == 1
    assert b"Idempotency-Key" not in sent[0]["raw_data"].encode()
    assert rows()[0].status == "sent"


def test_idempotency_key_replays_within_24h_and_is_a_new_send_after(smtp_server, api, account, relay_config):
    """Both front-ends: inside the window the key replays; once the first send is older than 24 h
    the same key (same request) is a new send, over SMTP and over REST."""
    raw = message(account.address).replace(b"Subject: hello\r\n", b"Subject: hello\r\nIdempotency-Key: daily-1\r\n")

    def smtp_once():
        client = RawClient(smtp_server)
        client.authenticate(account.address, account.token)
        client.start_data(account.address)
        reply = client.cmd(raw.decode() + ".\r\n")
        client.close()
        return reply

    def rest_once():
        return api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to=["a@example.com"]),
                        headers={"Idempotency-Key": "daily-2"})

    def age_all_sends(hours):
        with models.db.connection_context():
            models.OutboundEmail.update(created_at=models.utcnow() - datetime.timedelta(hours=hours)).execute()

    first_smtp, first_rest = smtp_once(), rest_once()
    assert first_smtp.startswith("250 2.0.0 OK queued as ob_") and first_rest.status_code == 202
    smtp_id, rest_id = first_smtp.rsplit(" ", 1)[1], first_rest.json()["id"]
    age_all_sends(23)
    assert smtp_once() == codes.already_queued(smtp_id)
    assert rest_once().headers.get("Idempotent-Replayed") == "true"
    age_all_sends(25)
    again_smtp, again_rest = smtp_once(), rest_once()
    assert again_smtp.startswith("250 2.0.0 OK queued as ob_") and again_smtp.rsplit(" ", 1)[1] != smtp_id
    assert again_rest.status_code == 202 and "Idempotent-Replayed" not in again_rest.headers
    assert again_rest.json()["id"] != rest_id
    assert len(rows()) == 4


# -- the audit trail --------------------------------------------------------------------------------

def test_audit_records_auth_and_sends_with_prefix_ip_protocol(smtp_server, smtp_client, api_server, api, account,
                                                              run_cli):
    _, scoped = new_key(account, inboxes=[account.address], name="scoped")
    assert auth_reply(smtp_server, account.address, scoped[:-4] + "AAAA") == codes.AUTH_FAILED  # wrong token
    client = smtp_client(account.address, scoped)
    assert smtp_send(client, account.address)[0] == 250
    assert smtp_send(client, account.address.replace("agent", "agent+x"), to="ok@example.com")[0] == 250
    refused = ApiSession(api_server, scoped).post("/v1/inboxes/nobody@inboxlayer.dev/send", json=send_body())
    assert refused.status_code == 403

    prefix = scoped[:12]

    def audit_page():  # the SMTP server writes its rows in batches (every 0.5 s)
        page = api.get("/v1/audit", params={"key": prefix, "limit": 100}).json()
        return page if len(page["data"]) >= 6 else None

    page = wait_until(audit_page, what="six audit rows")
    seen = [(e["action"], e["outcome"], e["reason"], e["protocol"], e["client_ip"], e["key_prefix"])
            for e in reversed(page["data"])]
    assert ("auth", "failure", "credentials", "smtp", "127.0.0.1", prefix) in seen
    assert ("auth", "success", None, "smtp", "127.0.0.1", prefix) in seen
    assert seen.count(("send", "accepted", None, "smtp", "127.0.0.1", prefix)) == 2
    assert ("send", "refused", "key_scope", "api", "127.0.0.1", prefix) in seen
    assert ("auth", "success", None, "api", "127.0.0.1", prefix) in seen

    first = api.get("/v1/audit", params={"key": prefix, "limit": 2}).json()
    assert first["has_more"] is True and len(first["data"]) == 2
    second = api.get("/v1/audit", params={"key": prefix, "limit": 2, "cursor": first["next_cursor"]}).json()
    assert [e["id"] for e in second["data"]] == [e["id"] for e in page["data"][2:4]]

    # Only a manage key reads other keys' rows: the scoped key (send, read) sees its own only.
    own = ApiSession(api_server, scoped).get("/v1/audit", params={"limit": 100}).json()["data"]
    assert own and {e["key_prefix"] for e in own} == {prefix}

    result = run_cli("audit", "--key", prefix, "--json", "--limit", "100")
    assert result.returncode == 0, result.stderr
    cli_rows = json.loads(result.stdout)
    page_ids = [e["id"] for e in page["data"]]  # the CLI also sees the rows of the requests made since
    assert [r["id"] for r in cli_rows][-len(page_ids):] == page_ids
    assert {(r["key_prefix"], r["client_ip"]) for r in cli_rows} == {(prefix, "127.0.0.1")}


def test_audit_refused_send_at_rcpt_recorded(smtp_client, api, account):
    _, token = new_key(account, daily_limit=1)
    client = smtp_client(account.address, token)
    assert smtp_send(client, account.address)[0] == 250
    assert smtp_send(client, account.address)[0] == 550
    prefix = token[:12]
    refusals = wait_until(lambda: [e for e in api.get("/v1/audit", params={"key": prefix}).json()["data"]
                                   if e["outcome"] == "refused"], what="the refusal in the audit trail")
    assert [(e["reason"], e["protocol"]) for e in refusals] == [("key_limit_exceeded", "smtp")]


def test_audit_rows_past_retention_are_pruned(account, reconfigure, config):
    config["audit"]["retention_days"] = 90
    reconfigure()
    now = models.utcnow()
    ages = {"old": 91, "edge": 89, "new": 0}
    with models.db.connection_context():
        for detail, days in ages.items():
            models.AuditEvent.create(user=account.user, action="auth", outcome="success", protocol="api",
                                     detail=detail, occurred_at=now - datetime.timedelta(days=days))

    assert audit.prune(now) == 1

    with models.db.connection_context():
        kept = sorted(e.detail for e in models.AuditEvent.select().where(models.AuditEvent.user == account.user))
    assert kept == ["edge", "new"]
    assert (config["audit"]["prune_interval"], "core.audit:prune") in periodic.tasks(config)  # workers run it


# -- CLI and dashboard ------------------------------------------------------------------------------

def test_cli_tokens_create_with_scope_and_list_shows_it(run_cli, account, smtp_server):
    result = run_cli("tokens", "create", account.email, "--name", "agent-a", "--inbox", account.address,
                     "--permission", "send", "--expires-in", "30d", "--daily-limit", "50", "--sandbox", "--quiet")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("il_") and len(token.splitlines()) == 1
    assert auth_reply(smtp_server, account.address, token) == codes.AUTH_OK
    listing = run_cli("tokens", "list", account.email, "--json")
    assert listing.returncode == 0, listing.stderr
    listed = json.loads(listing.stdout)
    row = next(r for r in listed if r["name"] == "agent-a")
    assert (row["inboxes"], row["permissions"], row["daily_limit"], row["sandbox"]) == (
        [account.address], ["send"], 50, True)
    assert row["expires_at"] is not None and row["last_used_ip"] == "127.0.0.1" and row["last_used_via"] == "smtp"
    table = run_cli("tokens", "list", account.email).stdout
    assert "agent-a" in table and "from 127.0.0.1 (smtp)" in table and "sandbox" in table

    for args, complaint in ((("--expires-in", "soon"), "--expires-in must be a number and a unit"),
                            (("--permission", "root"), "--permission must be one or more of"),
                            (("--inbox", "nobody@inboxlayer.dev"), "--inbox no inbox")):
        bad = run_cli("tokens", "create", account.email, "--name", "x", *args)
        assert bad.returncode == 2 and complaint in bad.stderr, bad.stderr


def test_dashboard_key_form_offers_the_choices_and_the_list_shows_them(web, config):
    web.create_inbox("bot")
    page = web.get("/account/keys/").get_data(as_text=True)
    for name in ('name="inboxes"', 'value="bot@inboxlayer.dev"', 'name="permissions"', 'value="manage"',
                 'name="expires_in"', 'name="daily_limit"', 'name="sandbox"'):
        assert name in page
    response = web.post("/account/keys/", {"name": "scoped-bot", "inboxes": "bot@inboxlayer.dev",
                                           "permissions": ["send"], "expires_in": "7d", "daily_limit": "25",
                                           "sandbox": "y"}, page="/account/keys/")
    assert response.status_code == 201, response.get_data(as_text=True)
    html = response.get_data(as_text=True)
    row = re.search(r'<tr data-token-id="\d+">.*?scoped-bot.*?</tr>', html, re.S).group(0)
    assert "bot@inboxlayer.dev" in row and ">send<" in row and "25" in row and "sandbox" in row
    with models.db.connection_context():
        token = models.ApiToken.get(models.ApiToken.name == "scoped-bot")
        assert keys.describe(token)["permissions"] == ["send"] and token.daily_limit == 25 and token.sandbox
    detail = web.get(f"/account/keys/{token.id}")
    assert detail.status_code == 200 and "Audit trail" in detail.get_data(as_text=True)
    assert re.search(r'<input checked id="permissions-0" name="permissions" type="checkbox" value="send">', page)
    refused = web.post("/account/keys/", {"name": "none", "daily_limit": "0"}, page="/account/keys/")
    assert refused.status_code == 422
    assert "Use a whole number of sends, at least 1." in refused.get_data(as_text=True)
    plain = web.post("/account/keys/", {"name": "plain"}, page="/account/keys/")  # nothing ticked: the defaults
    assert plain.status_code == 201
    with models.db.connection_context():
        plain_row = models.ApiToken.get(models.ApiToken.name == "plain")
        assert keys.describe(plain_row)["permissions"] == ["send", "read"] and plain_row.inbox_ids is None
