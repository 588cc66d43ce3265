"""API keys an agent can be trusted with (issue 13): inbox scope, permissions, expiry, the per-key
daily cap and key creation through the API, enforced the same way over real SMTP (smtplib, swaks,
a raw socket) and real HTTP, on both databases (docs/api.md "API keys", docs/smtp.md reply table)."""
import datetime
import re
import smtplib
import subprocess

import pytest

import models
from core import accounts
from core import keys
from tests import smtp_codes as codes
from tests.fixtures_api import ApiSession
from tests.fixtures_api import send_body
from tests.fixtures_smtp import RawClient
from tests.fixtures_smtp import message
from tests.helpers import wait_until


def new_key(account, inboxes=None, permissions=keys.DEFAULT_PERMISSIONS, expires_at=None, daily_limit=None,
            sandbox=False, name="scoped"):
    with models.db.connection_context():
        scope = keys.build_scope(account.user, inboxes=inboxes, permissions=list(permissions),
                                 expires_at=expires_at, daily_limit=daily_limit, sandbox=sandbox)
        return accounts.create_token(account.user, name, scope)


def second_inbox(account, local_part="other"):
    with models.db.connection_context():
        return accounts.create_inbox(account.user, local_part, None, "inboxlayer.dev")


def smtp_send(client, sender, to="someone@example.com", data=None):
    client.mail(sender)
    code, text = client.rcpt(to)
    if code != 250:
        return code, text.decode()
    code, text = client.data(data or message(sender, to=to))
    return code, text.decode()


def auth_reply(server, username, password):
    client = RawClient(server)
    try:
        client.reply()
        client.starttls()
        client.cmd("EHLO client.example")
        return client.login(username, password)
    finally:
        client.close()


def outbound_ids(api):
    return sorted(o["id"] for o in api.get("/v1/outbound").json()["data"])


# -- scope: inbox A only --------------------------------------------------------------------------

def test_key_scoped_to_one_inbox_sends_from_it_only(smtp_server, smtp_client, api_server, api, account):
    other = second_inbox(account)
    row, token = new_key(account, inboxes=[account.address])
    scoped = ApiSession(api_server, token)

    client = smtp_client(account.address, token)  # smtplib, STARTTLS, AUTH PLAIN
    code, text = smtp_send(client, account.address)
    assert code == 250 and re.fullmatch(r"2\.0\.0 OK queued as ob_[0-9a-f]+", text), text
    swaks = subprocess.run(
        ["swaks", "--server", smtp_server.host, "--port", str(smtp_server.starttls_port), "--tls", "--tls-verify",
         "--tls-ca-path", str(smtp_server.cafile), "--auth", "LOGIN", "--auth-user", account.address,
         "--auth-password", token, "--from", account.address, "--to", "someone@example.com",
         "--header", "Subject: by swaks"], capture_output=True, text=True, timeout=60)
    assert swaks.returncode == 0, swaks.stdout + swaks.stderr
    assert re.search(r"^<~?  250 2\.0\.0 OK queued as ob_[0-9a-f]+$", swaks.stdout, re.M), swaks.stdout

    # AUTH as inbox B of the same account, and as an address that does not exist: the same reply.
    assert auth_reply(smtp_server, other.address, token) == codes.KEY_OUT_OF_SCOPE
    assert auth_reply(smtp_server, "nobody-here@inboxlayer.dev", token) == codes.KEY_OUT_OF_SCOPE
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        smtp_client(other.address, token)
    assert (refused.value.smtp_code, refused.value.smtp_error.decode()) == (535, codes.KEY_OUT_OF_SCOPE[4:])

    assert scoped.post(f"/v1/inboxes/{account.address}/send", json=send_body()).status_code == 202
    for address in (other.address, "nobody-here@inboxlayer.dev"):
        refused = scoped.post(f"/v1/inboxes/{address}/send", json=send_body())
        assert (refused.status_code, refused.json()["error"]) == (403, {
            "code": "key_scope", "message": "inbox outside the API key's scope"})

    # The account's full key sends from B; the scoped key does not see that message anywhere.
    from_b = api.post(f"/v1/inboxes/{other.address}/send", json=send_body()).json()["id"]
    mine = [o for o in scoped.get("/v1/outbound").json()["data"]]
    assert len(mine) == 3 and {o["inbox"] for o in mine} == {account.address}
    assert from_b in outbound_ids(api) and from_b not in outbound_ids(scoped)
    assert scoped.get(f"/v1/outbound/{from_b}").status_code == 404
    assert [i["address"] for i in scoped.get("/v1/inboxes").json()["data"]] == [account.address]
    assert scoped.get(f"/v1/inboxes/{other.address}/messages").status_code == 403
    assert scoped.get("/v1/outbound", params={"inbox": other.address}).status_code == 403


# -- permissions and expiry -----------------------------------------------------------------------

def test_key_read_only_reads_but_cannot_send(smtp_server, api_server, api, account):
    api.post(f"/v1/inboxes/{account.address}/send", json=send_body())
    _, token = new_key(account, permissions=[keys.READ])
    reader = ApiSession(api_server, token)
    assert len(reader.get("/v1/outbound").json()["data"]) == 1
    messages = reader.get(f"/v1/inboxes/{account.address}/messages")
    assert messages.status_code == 200 and len(messages.json()["data"]) == 1
    refused = reader.post(f"/v1/inboxes/{account.address}/send", json=send_body())
    assert (refused.status_code, refused.json()["error"]) == (403, {
        "code": "key_scope", "message": "API key lacks the send permission"})
    assert auth_reply(smtp_server, account.address, token) == codes.KEY_LACKS_SEND
    assert reader.post("/v1/inboxes", json={"name": "more"}).json()["error"] == {
        "code": "key_scope", "message": "API key lacks the manage permission"}


def test_key_send_only_cannot_read(api_server, account):
    _, token = new_key(account, permissions=[keys.SEND])
    sender = ApiSession(api_server, token)
    assert sender.post(f"/v1/inboxes/{account.address}/send", json=send_body()).status_code == 202
    assert sender.get("/v1/outbound").status_code == 403
    assert sender.get(f"/v1/inboxes/{account.address}/messages").status_code == 403


def test_key_expired_refused_everywhere_including_an_open_smtp_session(smtp_server, smtp_client, api_server,
                                                                         account):
    expires_at = models.utcnow() + datetime.timedelta(seconds=4)
    _, token = new_key(account, expires_at=expires_at)
    rest = ApiSession(api_server, token)
    client = smtp_client(account.address, token)  # authenticated before expiry
    assert smtp_send(client, account.address)[0] == 250
    assert rest.get("/v1/outbound").status_code == 200

    wait_until(lambda: models.utcnow() > expires_at, timeout=10, what="the key's expiry")
    code, text = client.mail(account.address)  # a new transaction in the same session
    assert (code, text.decode()) == (530, codes.KEY_EXPIRED_AT_MAIL[4:])
    assert auth_reply(smtp_server, account.address, token) == codes.KEY_EXPIRED
    for method, path in (("GET", "/v1/outbound"), ("POST", f"/v1/inboxes/{account.address}/send")):
        refused = rest.request(method, path, json=send_body())
        assert (refused.status_code, refused.json()["error"]) == (401, {"code": "key_expired",
                                                                        "message": "API key expired"})


# -- the per-key daily cap -------------------------------------------------------------------------

def test_key_daily_cap_3_refuses_the_4th_over_smtp_and_rest_other_keys_still_send(smtp_client, api_server, api,
                                                                                  account):
    _, token = new_key(account, daily_limit=3)
    capped = ApiSession(api_server, token)
    client = smtp_client(account.address, token)
    assert smtp_send(client, account.address)[0] == 250
    first = capped.post(f"/v1/inboxes/{account.address}/send", json=send_body())
    assert first.status_code == 202
    assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == ("3", "1")
    assert smtp_send(client, account.address)[0] == 250

    code, text = smtp_send(client, account.address)
    assert (code, text) == (550, codes.key_limit(3, 3)[4:])
    client.rset()
    refused = capped.post(f"/v1/inboxes/{account.address}/send", json=send_body())
    assert refused.status_code == 429
    assert refused.json()["error"] == {"code": "key_limit_exceeded", "message": codes.key_limit(3, 3)[10:]}
    assert (refused.headers["X-RateLimit-Limit"], refused.headers["X-RateLimit-Remaining"]) == ("3", "0")
    assert 0 < int(refused.headers["Retry-After"]) <= 86400 and int(refused.headers["X-RateLimit-Reset"]) > 0

    assert api.post(f"/v1/inboxes/{account.address}/send", json=send_body()).status_code == 202  # another key
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 4
        assert keys.key_sends_today(models.ApiToken.get(models.ApiToken.prefix == token[:12]).id) == 3


# -- keys through the API ---------------------------------------------------------------------------

def test_key_manage_creates_a_narrower_key_never_a_wider_one(api_server, api, account):
    other = second_inbox(account)
    _, token = new_key(account, inboxes=[account.address], permissions=keys.PERMISSIONS, daily_limit=10,
                       name="manager")
    manager = ApiSession(api_server, token)
    created = manager.post("/v1/api-keys", json={"name": "child", "inboxes": [account.address],
                                                  "permissions": ["send"], "daily_limit": 5,
                                                  "expires_at": "2030-01-01T00:00:00Z"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["token"].startswith("il_") and body["prefix"] == body["token"][:12]
    assert (body["inboxes"], body["permissions"], body["daily_limit"], body["expires_at"], body["sandbox"]) == (
        [account.address], ["send"], 5, "2030-01-01T00:00:00Z", False)
    child = ApiSession(api_server, body["token"])
    assert child.post(f"/v1/inboxes/{account.address}/send", json=send_body()).status_code == 202
    assert child.get("/v1/api-keys").status_code == 403  # no manage permission

    a = [account.address]
    wider = [({"inboxes": [other.address], "daily_limit": 5}, "inboxes outside its own scope"),
             ({"daily_limit": 5}, "inboxes outside its own scope"),  # no list = every inbox
             ({"inboxes": a, "daily_limit": 11}, "a higher daily limit than its own"),
             ({"inboxes": a}, "a higher daily limit than its own"),  # no cap = more than 10
             ({"inboxes": a, "daily_limit": 5, "permissions": ["send", "manage"], "sandbox": False}, None)]
    for extra, reason in wider:
        body = {"name": "wider", "permissions": ["send"], **extra}
        refused = manager.post("/v1/api-keys", json=body)
        if reason is None:  # an equal permission is no wider
            assert refused.status_code == 201, refused.text
            continue
        assert (refused.status_code, refused.json()["error"]) == (403, {
            "code": "key_scope", "message": f"an API key cannot grant {reason}"}), extra
    listed = {k["name"]: k for k in api.get("/v1/api-keys").json()["data"]}
    assert set(listed) == {"test", "manager", "child", "wider"} and "token" not in listed["child"]
    # The account's own (all-powerful) key cannot be revoked by the narrower manager; its child can.
    assert manager.delete(f"/v1/api-keys/{listed['test']['id']}").json()["error"]["code"] == "key_scope"
    assert manager.delete(f"/v1/api-keys/{listed['child']['id']}").status_code == 204
    assert child.post(f"/v1/inboxes/{account.address}/send", json=send_body()).status_code == 401


@pytest.mark.parametrize("body, field", [
    ({"name": "x", "permissions": ["send", "delete"]}, "permissions"),
    ({"name": "x", "inboxes": ["nobody@inboxlayer.dev"]}, "inboxes"),
    ({"name": "x", "inboxes": []}, "inboxes"),
    ({"name": "x", "daily_limit": 0}, "daily_limit"),
    ({"name": "x", "daily_limit": True}, "daily_limit"),
    ({"name": "x", "expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
    ({"name": "x", "expires_at": "tomorrow"}, "expires_at"),
    ({"name": "x", "sandbox": "yes"}, "sandbox"),
    ({"name": ""}, "name"),
    ({"name": "x", "admin": True}, "admin"),
])
def test_key_create_invalid_request_is_422_naming_the_field(api, body, field):
    refused = api.post("/v1/api-keys", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["message"].startswith(f"{field}: ")


def test_key_defaults_keep_todays_behaviour(api, account):
    created = api.post("/v1/api-keys", json={"name": "plain"}).json()
    assert (created["inboxes"], created["permissions"], created["expires_at"], created["daily_limit"],
            created["sandbox"]) == (None, ["send", "read"], None, None, False)
    # The fixture's key stands for one created before scopes existed: every permission (migration 0006).
    assert api.get("/v1/account").json()["token"]["permissions"] == ["send", "read", "manage"]


# -- IMAP (the same decision: read permission, inbox scope, expiry) -----------------------------------

def test_key_scope_applies_to_imap_login(account, imap_client):
    import imaplib

    other = second_inbox(account)
    _, scoped = new_key(account, inboxes=[account.address])
    _, send_only = new_key(account, permissions=[keys.SEND], name="send-only")
    _, expired = new_key(account, expires_at=models.utcnow() + datetime.timedelta(seconds=2), name="short")
    assert imap_client(account.address, scoped).select("Sent")[0] == "OK"
    for username, password in ((other.address, scoped), (account.address, send_only)):
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
            imap_client(username, password)
    with models.db.connection_context():
        expires_at = models.ApiToken.get(models.ApiToken.name == "short").expires_at
    wait_until(lambda: models.utcnow() > expires_at, timeout=10, what="the key's expiry")
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        imap_client(account.address, expired)


def test_key_scope_applies_to_webhooks_and_the_event_feed(api_server, account):
    _, scoped = new_key(account, inboxes=[account.address], permissions=keys.PERMISSIONS, name="scoped-manager")
    _, reader = new_key(account, permissions=[keys.READ], name="reader")
    scoped_api, reader_api = ApiSession(api_server, scoped), ApiSession(api_server, reader)
    refused = scoped_api.get("/v1/events")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "key_scope")
    assert scoped_api.get("/v1/events", params={"inbox": account.address}).status_code == 200
    assert scoped_api.get("/v1/webhooks").json()["error"]["message"] == \
        "webhooks are account-wide: use an API key that sees every inbox"
    assert reader_api.get("/v1/webhooks").status_code == 200
    created = reader_api.post("/v1/webhooks", json={"url": "https://example.com/hook", "events": []})
    assert (created.status_code, created.json()["error"]["message"]) == (403, "API key lacks the manage permission")


def test_key_scoped_to_one_inbox_cannot_act_for_the_whole_account(api_server, account):
    """Creating inboxes and changing the suppression list reach every inbox of the account: a key
    confined to one inbox is refused them even with ``manage``; an account-wide manage key is not."""
    _, scoped = new_key(account, inboxes=[account.address], permissions=keys.PERMISSIONS, name="scoped-manager")
    _, wide = new_key(account, permissions=keys.PERMISSIONS, name="account-manager")
    scoped_api, wide_api = ApiSession(api_server, scoped), ApiSession(api_server, wide)
    attempts = [("post", "/v1/inboxes", {"name": "newbox"}, "new inboxes"),
                ("post", "/v1/suppressions", {"address": "x@example.com"}, "suppressions"),
                ("delete", "/v1/suppressions/y@example.com", None, "suppressions")]
    for method, path, body, what in attempts:
        refused = getattr(scoped_api, method)(path, **({"json": body} if body is not None else {}))
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "key_scope"), path
        assert refused.json()["error"]["message"] == f"{what} are account-wide: use an API key that sees every inbox"
    with models.db.connection_context():
        assert not models.Inbox.select().where(models.Inbox.address.startswith("newbox@")).exists()
        assert not models.Suppression.select().where(models.Suppression.address == "x@example.com").exists()
    assert wide_api.post("/v1/inboxes", json={"name": "newbox"}).status_code == 201
    assert wide_api.post("/v1/suppressions", json={"address": "x@example.com"}).status_code == 201
    assert scoped_api.get("/v1/suppressions").status_code == 200  # reading stays a read
