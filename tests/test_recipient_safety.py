"""Recipient safety (issue 14) over real SMTP (smtplib against `inboxlayer smtpd` processes), real
HTTP (the API on a real WSGI server), SES events through signed SNS notifications into the real
webhook, and moto SES for the relay. Both databases (the ``config`` fixture's parameter)."""
import datetime
import json
import smtplib
import ssl
from concurrent.futures import ThreadPoolExecutor

import pytest

import models
from core import recipients
from smtpd_worker import jobs
from tests import smtp_codes as codes
from tests.fixtures_api import ApiSession
from tests.fixtures_relay import make_message
from tests.fixtures_relay import outbound
from tests.fixtures_relay import ses_event
from tests.fixtures_relay import events_of
from tests.test_keys import new_key

TODAY = datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def bounce(address):
    return {"bounceType": "Permanent", "bounceSubType": "General", "feedbackId": f"fb-{address}",
            "bouncedRecipients": [{"emailAddress": address, "action": "failed", "status": "5.1.1",
                                   "diagnosticCode": f"smtp; 550 5.1.1 <{address}>: user unknown"}]}


def rcpt(client, address):
    code, text = client.rcpt(address)
    return f"{code} {text.decode()}"


def message_to(account, recipients_, subject="Hello"):
    return make_message(account.address, to=", ".join(recipients_), subject=subject)


def sends_today(account):
    with models.db.connection_context():
        return models.sends_today(account.user)


def sent_to(ses_sent, subject):
    return [m["destinations"] for m in ses_sent() if f"Subject: {subject}\r\n" in m["raw_data"]]


# -- suppression ------------------------------------------------------------------------------

def test_hard_bounce_suppresses_bob_smtp_refuses_him_and_carol_still_goes(
        relay_config, account, submit, sns, smtp_server, smtp_client, api, ses_sent):
    first = submit(recipients=["bob@x.com"])
    assert jobs.relay_outbound(first.id) == "sent"
    response = sns.publish(ses_event("Bounce", outbound(first.id), **bounce("bob@x.com")))
    assert response.status_code == 200
    reason = f"hard bounce {TODAY}: 550 5.1.1 user unknown"
    used_before = sends_today(account)

    client = smtp_client(account.address, account.token)
    client.mail(account.address)
    assert rcpt(client, "bob@x.com") == codes.recipient_suppressed("bob@x.com", reason)
    assert rcpt(client, "Bob@X.com") == codes.recipient_suppressed("Bob@X.com", reason)
    assert rcpt(client, "bob+1@x.com") == codes.recipient_suppressed("bob+1@x.com", reason)
    assert rcpt(client, "carol@x.com") == codes.RECIPIENT_OK
    # (the To: header names carol only: moto lists header recipients among the destinations too)
    code, text = client.data(message_to(account, ["carol@x.com"], subject="after bounce"))
    assert f"{code} {text.decode()}".startswith(codes.QUEUED_PREFIX)
    public_id = text.decode().rsplit(" ", 1)[1]

    # quota charged for carol only; the refusals are recorded with the message
    assert sends_today(account) == used_before + 1
    with models.db.connection_context():
        row = models.OutboundEmail.get(models.OutboundEmail.public_id == public_id)
    assert json.loads(row.recipients) == ["carol@x.com"]
    queued = events_of(row.id)[0]
    assert queued[0] == "queued"
    assert [r["address"] for r in queued[1]["refused"]] == ["bob@x.com", "Bob@X.com", "bob+1@x.com"]
    shown = api.get(f"/v1/outbound/{public_id}").json()["refused_recipients"]
    assert shown == [{"address": a, "reason": codes.recipient_suppressed(a, reason)}
                     for a in ("bob@x.com", "Bob@X.com", "bob+1@x.com")]
    sent_copy = api.get(f"/v1/inboxes/{account.address}/messages/{row.message_id}").json()
    assert sent_copy["outbound_id"] == public_id and sent_copy["refused_recipients"] == shown
    assert jobs.relay_outbound(row.id) == "sent"
    assert [set(d) for d in sent_to(ses_sent, "after bounce")] == [{"carol@x.com"}]

    # REST names the suppressed recipient, charges nothing
    response = api.post(f"/v1/inboxes/{account.address}/send",
                        json={"to": ["carol@x.com", "BOB+tag@X.COM"], "subject": "s", "text": "t"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "recipient_suppressed"
    assert "BOB+tag@x.com" in response.json()["error"]["message"] and reason in response.json()["error"]["message"]
    assert sends_today(account) == used_before + 1

    listed = api.get("/v1/suppressions").json()["data"]
    assert [(s["address"], s["source"], s["reason"]) for s in listed] == [("bob@x.com", "bounce", reason)]

    # removing the entry (by any variant) lets bob through
    assert api.delete("/v1/suppressions/Bob@x.com").status_code == 204
    assert api.get("/v1/suppressions").json()["data"] == []
    client.rset()
    client.mail(account.address)
    assert rcpt(client, "bob@x.com") == codes.RECIPIENT_OK
    response = api.post(f"/v1/inboxes/{account.address}/send", json={"to": ["bob@x.com"], "subject": "s", "text": "t"})
    assert response.status_code == 202


def test_complaint_suppresses_the_complainer(relay_config, account, submit, sns, api):
    row = submit(recipients=["dave@y.org"])
    assert jobs.relay_outbound(row.id) == "sent"
    response = sns.post(json.dumps(sns.signed(ses_event(
        "Complaint", outbound(row.id), complaintFeedbackType="abuse",
        complainedRecipients=[{"emailAddress": "dave@y.org"}]))))
    assert response.status_code == 200

    response = api.post(f"/v1/inboxes/{account.address}/send", json={"to": ["dave@y.org"], "subject": "s", "text": "t"})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "recipient_suppressed")
    assert f"complaint {TODAY}: abuse" in response.json()["error"]["message"]


def api_inbox(api):
    return api.get("/v1/inboxes").json()["data"][0]["address"]


def test_suppression_is_per_account(config, api, api_server, smtp_server, smtp_client):
    from tests.fixtures_api import ApiSession
    from tests.helpers import make_account

    other = make_account(email="other@example.com", local_part="other")
    assert api.post("/v1/suppressions", json={"address": "eve@z.net"}).status_code == 201
    client = smtp_client(other.address, other.token)
    client.mail(other.address)
    assert rcpt(client, "eve@z.net") == codes.RECIPIENT_OK
    with ApiSession(api_server, other.token) as session:
        assert session.get("/v1/suppressions").json()["data"] == []
        # another account's inbox is not found, whatever the method
        assert session.get(f"/v1/inboxes/{api_inbox(api)}/policy").status_code == 404
        assert session.put(f"/v1/inboxes/{api_inbox(api)}/policy", json={"block": ["@x.com"]}).status_code == 404
        assert session.post(f"/v1/inboxes/{api_inbox(api)}/resume").status_code == 404
        assert session.delete("/v1/suppressions/eve@z.net").status_code == 404
    assert [s["address"] for s in api.get("/v1/suppressions").json()["data"]] == ["eve@z.net"]


# -- policy -----------------------------------------------------------------------------------

def test_allowlist_lets_partner_through_refuses_others_and_blocklist_wins(account, api, smtp_server, smtp_client):
    response = api.put(f"/v1/inboxes/{account.address}/policy",
                       json={"allow": ["@partner.com", "*.partner.org"], "block": ["CEO@Partner.com"]})
    assert response.status_code == 200
    assert (response.json()["allow"], response.json()["block"]) == (["@partner.com", "*.partner.org"],
                                                                    ["ceo@partner.com"])

    client = smtp_client(account.address, account.token)
    client.mail(account.address)
    assert rcpt(client, "ann@partner.com") == codes.RECIPIENT_OK
    assert rcpt(client, "ann@eu.partner.org") == codes.RECIPIENT_OK
    assert rcpt(client, "ann@partner.org") == codes.recipient_not_allowed("ann@partner.org")
    assert rcpt(client, "ann@other.com") == codes.recipient_not_allowed("ann@other.com")
    assert rcpt(client, "ann@sub.partner.com") == codes.recipient_not_allowed("ann@sub.partner.com")
    assert rcpt(client, "ceo@partner.com") == codes.recipient_not_allowed("ceo@partner.com")
    assert rcpt(client, "ceo+x@PARTNER.com") == codes.recipient_not_allowed("ceo+x@PARTNER.com")
    code, text = client.data(message_to(account, ["ann@partner.com"]))
    assert f"{code} {text.decode()}".startswith(codes.QUEUED_PREFIX)

    response = api.post(f"/v1/inboxes/{account.address}/send",
                        json={"to": ["ann@partner.com", "x@other.com", "ceo@partner.com"], "subject": "s", "text": "t"})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "recipient_not_allowed")
    assert "x@other.com" in response.json()["error"]["message"]
    assert "ceo@partner.com" in response.json()["error"]["message"]
    response = api.post(f"/v1/inboxes/{account.address}/send",
                        json={"to": ["bob@partner.com"], "subject": "s", "text": "t"})
    assert response.status_code == 202


def test_blocklist_alone_refuses_only_listed(account, api, smtp_server, smtp_client):
    assert api.put(f"/v1/inboxes/{account.address}/policy", json={"block": ["@spam.example"]}).status_code == 200
    client = smtp_client(account.address, account.token)
    client.mail(account.address)
    assert rcpt(client, "a@spam.example") == codes.recipient_not_allowed("a@spam.example")
    assert rcpt(client, "a@ham.example") == codes.RECIPIENT_OK


@pytest.mark.parametrize("pattern, address, expected", [
    ("bob@x.com", "bob@x.com", True),
    ("bob@x.com", "Bob+tag@X.com", True),
    ("bob@x.com", "bobby@x.com", False),
    ("@x.com", "anyone@X.COM", True),
    ("@x.com", "a@sub.x.com", False),
    ("*.x.com", "a@sub.x.com", True),
    ("*.x.com", "a@deep.sub.x.com", True),
    ("*.x.com", "a@x.com", False),
    ("*.x.com", "a@evilx.com", False),
])
def test_policy_pattern_matching(pattern, address, expected):
    assert recipients.matches(recipients.clean_pattern(pattern, "allow[0]"), recipients.address_key(address)) \
        is expected


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({"allow": ["bob@@x.com"]}, "allow[0]"),
    ({"allow": ["@partner.com", "*bob@x.com"]}, "allow[1]"),
    ({"block": ["@"]}, "block[0]"),
    ({"block": ["x.com"]}, "block[0]"),
    ({"block": ["*.x"]}, "block[0]"),
    ({"allow": ["bob\x00@x.com"]}, "allow[0]"),
    ({"allow": ["bob@x.com\r\nBcc: e@y.com"]}, "allow[0]"),
    ({"allow": [42]}, "allow[0]"),
    ({"allow": "@x.com"}, "allow"),
    ({"allow": [f"u{i}@x.com" for i in range(10_000)]}, "allow"),
    ({"new_recipients_per_day": -1}, "new_recipients_per_day"),
    ({"colour": "red"}, "colour"),
])
def test_policy_bad_input_gets_422_naming_the_field_and_saves_nothing(account, api, body, field):
    good = {"allow": ["@partner.com"], "block": ["ceo@partner.com"]}
    assert api.put(f"/v1/inboxes/{account.address}/policy", json=good).status_code == 200

    response = api.put(f"/v1/inboxes/{account.address}/policy", json=body)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["message"].startswith(f"{field}: ")
    policy = api.get(f"/v1/inboxes/{account.address}/policy").json()
    assert (policy["allow"], policy["block"], policy["new_recipients_per_day"]) == (good["allow"], good["block"], None)


@pytest.mark.parametrize("body, field", [
    ({"address": "not-an-address"}, "address"),
    ({"address": "bob\x07@x.com"}, "address"),
    ({"address": "bob@x.com", "reason": "a\r\nb"}, "reason"),
    ({"addresses": ["ok@x.com", "bad@@x.com"]}, "addresses[1]"),
    ({"addresses": [f"u{i}@x.com" for i in range(10_000)]}, "addresses"),
    ({"addresses": []}, "addresses"),
    ({}, "address"),
])
def test_suppression_bad_input_gets_422_naming_the_field_and_saves_nothing(api, body, field):
    response = api.post("/v1/suppressions", json=body)

    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith(f"{field}: ")
    assert api.get("/v1/suppressions").json()["data"] == []


def test_suppression_batch_added_once_keeps_first_reason(api):
    response = api.post("/v1/suppressions", json={"addresses": ["A@x.com", "b@x.com"], "reason": "asked us"})
    assert response.status_code == 201
    assert [s["address"] for s in response.json()["data"]] == ["A@x.com", "b@x.com"]
    again = api.post("/v1/suppressions", json={"address": "a+1@X.com", "reason": "later"})
    assert (again.status_code, again.json()["address"], again.json()["reason"]) == (201, "A@x.com", "asked us")
    assert len(api.get("/v1/suppressions").json()["data"]) == 2


# -- first-contact cap ------------------------------------------------------------------------

def _smtp_one(node, cafile, account, address):
    """One message to ``address``; the reply that decided it: RCPT's refusal or the end of DATA."""
    client = smtplib.SMTP(node.host, node.starttls_port, timeout=60)
    try:
        client.starttls(context=ssl.create_default_context(cafile=str(cafile)))
        client.login(account.address, account.token)
        client.mail(account.address)
        code, text = client.rcpt(address)
        if code != 250:
            return code, text.decode()
        code, text = client.data(message_to(account, [address]))
        return code, text.decode()
    finally:
        client.close()


def test_first_contact_cap_holds_across_two_smtp_processes_and_rest(account, api, start_smtp_server):
    assert api.put(f"/v1/inboxes/{account.address}/policy",
                   json={"new_recipients_per_day": 3}).json()["effective_new_recipients_per_day"] == 3
    nodes = [start_smtp_server(), start_smtp_server()]
    cafile = nodes[0].cafile

    def attempt(i):
        address = f"new{i}@fresh.example"
        if i % 3 == 2:
            response = api.post(f"/v1/inboxes/{account.address}/send",
                                json={"to": [address], "subject": "s", "text": "t"})
            return address, "api", response.status_code, response.json(), response.headers.get("Retry-After")
        code, text = _smtp_one(nodes[i % 2], cafile, account, address)
        return address, "smtp", code, text, None

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(attempt, range(10)))

    accepted = [r for r in results if r[2] in (250, 202)]
    refused = [r for r in results if r[2] not in (250, 202)]
    assert len(accepted) == 3, results
    assert len(refused) == 7, results
    for address, via, status, body, retry_after in refused:
        if via == "smtp":
            assert (status, body) == (451, "4.7.1 new-recipient limit reached (3/3 today, resets 00:00 UTC)")
        else:
            assert (status, body["error"]["code"]) == (429, "new_recipient_limit")
            assert body["error"]["message"] == "new-recipient limit reached (3/3 today, resets 00:00 UTC)"
            assert 0 < int(retry_after) <= 86401
    with models.db.connection_context():
        known = {k.address for k in models.KnownRecipient.select().where(models.KnownRecipient.inbox == account.inbox)}
        assert known == {r[0] for r in accepted}
        assert recipients.new_today(account.inbox) == 3

    # a known recipient still goes after the cap, over SMTP and REST; the next new one does not
    again = accepted[0][0]
    code, text = _smtp_one(nodes[1], cafile, account, again)
    assert code == 250, text
    response = api.post(f"/v1/inboxes/{account.address}/send", json={"to": [again], "subject": "s", "text": "t"})
    assert response.status_code == 202
    assert _smtp_one(nodes[0], cafile, account, "one-more@fresh.example") == (
        451, "4.7.1 new-recipient limit reached (3/3 today, resets 00:00 UTC)")


def test_first_contact_not_consumed_by_an_aborted_transaction(account, api, smtp_server, smtp_client):
    api.put(f"/v1/inboxes/{account.address}/policy", json={"new_recipients_per_day": 1})
    client = smtp_client(account.address, account.token)
    client.mail(account.address)
    assert rcpt(client, "first@fresh.example") == codes.RECIPIENT_OK
    assert rcpt(client, "second@fresh.example") == codes.new_recipient_limit(1, 1)
    client.rset()  # abandoned: the accepted RCPT consumed nothing
    with models.db.connection_context():
        assert recipients.new_today(account.inbox) == 0
    client.mail(account.address)
    assert rcpt(client, "other@fresh.example") == codes.RECIPIENT_OK
    code, text = client.data(message_to(account, ["other@fresh.example"]))
    assert code == 250, text


def test_sandbox_and_simulator_recipients_are_not_first_contacts(account, api, api_server, smtp_client):
    """A sandbox key's messages and the mailbox simulator's addresses reach nobody: they neither
    spend the first-contact cap nor make their recipients known (both over SMTP and REST)."""
    api.put(f"/v1/inboxes/{account.address}/policy", json={"new_recipients_per_day": 1})
    _, sandbox = new_key(account, sandbox=True, name="sandbox")
    client = smtp_client(account.address, sandbox)
    client.mail(account.address)
    for address in ("s1@fresh.example", "s2@fresh.example"):
        assert rcpt(client, address) == codes.RECIPIENT_OK
    code, text = client.data(message_to(account, ["s1@fresh.example", "s2@fresh.example"]))
    assert code == 250, text
    response = ApiSession(api_server, sandbox).post(
        f"/v1/inboxes/{account.address}/send", json={"to": ["s3@fresh.example", "s4@fresh.example"],
                                                     "subject": "s", "text": "t"})
    assert response.status_code == 202, response.text
    simulated = ["delivered@simulator.inboxlayer.dev", "bounced@simulator.inboxlayer.dev"]
    assert api.post(f"/v1/inboxes/{account.address}/send",
                    json={"to": simulated, "subject": "s", "text": "t"}).status_code == 202
    with models.db.connection_context():
        assert recipients.new_today(account.inbox) == 0
        assert not models.KnownRecipient.select().where(models.KnownRecipient.inbox == account.inbox).exists()
    # the cap of 1 is still whole for a real first contact, and then spent
    real = smtp_client(account.address, account.token)
    real.mail(account.address)
    assert rcpt(real, "real@fresh.example") == codes.RECIPIENT_OK
    assert rcpt(real, "real2@fresh.example") == codes.new_recipient_limit(1, 1)


# -- automatic pause --------------------------------------------------------------------------

def test_five_hard_bounces_in_twenty_sends_pause_the_inbox_until_resumed(
        relay_config, account, submit, sns, api, smtp_server, smtp_client):
    rows = [submit(recipients=[f"r{i}@list.example"]) for i in range(20)]
    for row in rows:
        assert jobs.relay_outbound(row.id) == "sent"
    for i, row in enumerate(rows[:5]):
        response = sns.post(json.dumps(sns.signed(ses_event("Bounce", outbound(row.id), **bounce(f"r{i}@list.example")))))
        assert response.status_code == 200
        policy = api.get(f"/v1/inboxes/{account.address}/policy").json()
        assert policy["paused"] is (i == 4), (i, policy)
    reason = "5 hard bounces in the last 24 h (25 %)"
    assert policy["paused_reason"] == reason

    client = smtp_client(account.address, account.token)
    code, text = client.mail(account.address)
    assert f"{code} {text.decode()}" == codes.inbox_paused(reason)
    response = api.post(f"/v1/inboxes/{account.address}/send", json={"to": ["r10@list.example"], "subject": "s",
                                                                       "text": "t"})
    assert (response.status_code, response.json()["error"]["code"]) == (403, "inbox_paused")
    assert response.json()["error"]["message"] == f"inbox paused: {reason}; resume it in the dashboard"

    response = api.post(f"/v1/inboxes/{account.address}/resume")
    assert (response.status_code, response.json()["paused"]) == (200, False)
    code, _ = client.mail(account.address)
    assert code == 250
    assert rcpt(client, "r10@list.example") == codes.RECIPIENT_OK
    code, text = client.data(message_to(account, ["r10@list.example"]))
    assert code == 250, text
    response = api.post(f"/v1/inboxes/{account.address}/send", json={"to": ["r11@list.example"], "subject": "s",
                                                                       "text": "t"})
    assert response.status_code == 202


def test_two_complaints_pause_the_inbox(relay_config, account, submit, sns, api):
    rows = [submit(recipients=[f"c{i}@list.example"]) for i in range(2)]
    for i, row in enumerate(rows):
        assert jobs.relay_outbound(row.id) == "sent"
        sns.post(json.dumps(sns.signed(ses_event("Complaint", outbound(row.id), complaintFeedbackType="abuse",
                                                 complainedRecipients=[{"emailAddress": f"c{i}@list.example"}]))))
    policy = api.get(f"/v1/inboxes/{account.address}/policy").json()
    assert (policy["paused"], policy["paused_reason"]) == (True, "2 complaints in the last 24 h")


def test_transient_bounce_neither_suppresses_nor_pauses(relay_config, account, submit, sns, api):
    row = submit(recipients=["full@list.example"])
    assert jobs.relay_outbound(row.id) == "sent"
    soft = {**bounce("full@list.example"), "bounceType": "Transient", "bounceSubType": "MailboxFull"}
    assert sns.post(json.dumps(sns.signed(ses_event("Bounce", outbound(row.id), **soft)))).status_code == 200
    assert api.get("/v1/suppressions").json()["data"] == []


# -- CLI ----------------------------------------------------------------------------------------

def test_cli_suppressions_add_list_remove(account, api, api_server, run_cli):
    env = {"INBOXLAYER_API_URL": api_server, "INBOXLAYER_TOKEN": account.token}
    added = run_cli("suppressions", "add", "Bob@x.com", "eve@y.org", "--reason", "asked to stop", env=env)
    assert added.returncode == 0, added.stderr
    assert "suppressed Bob@x.com (asked to stop)" in added.stdout

    listed = run_cli("suppressions", "list", "--json", env=env)
    assert sorted(s["address"] for s in json.loads(listed.stdout)["data"]) == ["Bob@x.com", "eve@y.org"]
    table = run_cli("suppressions", "list", env=env)
    assert "Bob@x.com" in table.stdout and "asked to stop" in table.stdout

    removed = run_cli("suppressions", "remove", "bob+x@X.com", env=env)
    assert removed.returncode == 0, removed.stderr
    assert [s["address"] for s in api.get("/v1/suppressions").json()["data"]] == ["eve@y.org"]
    missing = run_cli("suppressions", "remove", "bob@x.com", env=env)
    assert missing.returncode == 1
    assert "not on the account's suppression list" in missing.stderr

    bad = run_cli("suppressions", "add", "not-an-address", env=env)
    assert bad.returncode == 1
    assert "addresses[0]" in bad.stderr or "address" in bad.stderr


def test_cli_inboxes_list_shows_pause_and_resume_clears_it(account, run_cli):
    with models.db.connection_context():
        assert recipients.pause(account.inbox.id, "6 hard bounces in the last 24 h (12 %)")
    listed = run_cli("inboxes", "list", "--json")
    row = [r for r in json.loads(listed.stdout) if r["address"] == account.address][0]
    assert (row["paused"], row["paused_reason"]) == (True, "6 hard bounces in the last 24 h (12 %)")
    assert "paused: 6 hard bounces in the last 24 h (12 %)" in run_cli("inboxes", "list").stdout

    resumed = run_cli("inboxes", "resume", account.address)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {account.address}" in resumed.stdout
    with models.db.connection_context():
        assert recipients.paused_reason(account.inbox.id) is None


# -- dashboard --------------------------------------------------------------------------------

def _web_inbox(web):
    inbox_id = web.create_inbox("agent")
    with models.db.connection_context():
        return models.Inbox.get_by_id(inbox_id)


def test_dashboard_suppressions_page_adds_lists_and_removes(web):
    page = web.get("/suppressions/")
    assert page.status_code == 200 and "No suppressed addresses." in page.get_data(as_text=True)

    response = web.post("/suppressions/", {"addresses": "Bob@x.com\neve@y.org", "reason": "asked to stop"},
                        page="/suppressions/")
    assert response.status_code == 302
    text = web.get("/suppressions/").get_data(as_text=True)
    assert "Bob@x.com" in text and "eve@y.org" in text and "asked to stop" in text and "Suppressed (2)" in text

    bad = web.post("/suppressions/", {"addresses": "ok@x.com\nbad@@x.com"}, page="/suppressions/")
    assert bad.status_code == 422
    assert "Line 2: " in bad.get_data(as_text=True) and "Nothing was added." in bad.get_data(as_text=True)
    assert "ok@x.com</code>" not in bad.get_data(as_text=True)

    assert web.post("/suppressions/remove", {"address": "bob+1@X.com"}, page="/suppressions/").status_code == 302
    text = web.get("/suppressions/").get_data(as_text=True)
    assert "Bob@x.com</code>" not in text and "Suppressed (1)" in text


def test_dashboard_inbox_policy_section_saves_all_or_nothing(web):
    inbox = _web_inbox(web)
    path = f"/inboxes/{inbox.id}"
    response = web.post(f"{path}/policy", {"allow": "@partner.com\n*.partner.org", "block": "ceo@partner.com",
                                           "cap": "7"}, page=path)
    assert response.status_code == 302
    with models.db.connection_context():
        assert recipients.policy_of(inbox) == {"allow": ["@partner.com", "*.partner.org"], "block": ["ceo@partner.com"]}
        assert models.Inbox.get_by_id(inbox.id).new_recipients_per_day == 7
    assert "@partner.com" in web.get(path).get_data(as_text=True)

    bad = web.post(f"{path}/policy", {"allow": "@partner.com\nbob@@x.com", "block": "", "cap": ""}, page=path)
    assert bad.status_code == 422
    assert "Allowlist line 2: " in bad.get_data(as_text=True) and "Nothing was saved." in bad.get_data(as_text=True)
    with models.db.connection_context():
        assert recipients.policy_of(inbox)["block"] == ["ceo@partner.com"]
        assert models.Inbox.get_by_id(inbox.id).new_recipients_per_day == 7


def test_dashboard_shows_why_an_inbox_is_paused_and_resumes_it(web):
    inbox = _web_inbox(web)
    with models.db.connection_context():
        recipients.pause(inbox.id, "6 hard bounces in the last 24 h (12 %)")
    text = web.get(f"/inboxes/{inbox.id}").get_data(as_text=True)
    assert 'id="inbox-paused"' in text and "6 hard bounces in the last 24 h (12 %)" in text

    assert web.post(f"/inboxes/{inbox.id}/resume", page=f"/inboxes/{inbox.id}").status_code == 302
    assert 'id="inbox-paused"' not in web.get(f"/inboxes/{inbox.id}").get_data(as_text=True)
    with models.db.connection_context():
        assert recipients.paused_reason(inbox.id) is None
