"""Events are written with the state change that causes them (and never without it): submission,
the relay's results, SES events, domain checks; a refused change writes none. Plus pruning, and an
endpoint disabled after days of failures with its owner told by email through our own relay."""
import datetime
import io
import json

import pytest

import models
from core import domains
from core import events
from core import submit as core_submit
from core.errors import QuotaExceeded
from smtpd_worker import jobs
from tests.dnsserver import publish
from tests.fixtures_relay import make_message
from tests.fixtures_webhooks import add_endpoint
from tests.fixtures_webhooks import deliver_pending
from tests.helpers import wait_until


def public_events(**where):
    ev = models.Event
    with models.db.connection_context():
        query = ev.select().order_by(ev.id)
        for name, value in where.items():
            query = query.where(getattr(ev, name) == value)
        return [(e.type, json.loads(e.data)) for e in query]


def test_events_submit_writes_queued_with_the_rest_resource(config, account, api, submit):
    row = submit()

    ((kind, data),) = public_events(outbound=row.id)
    assert kind == "outbound.queued"
    resource = api.get(f"/v1/outbound/{row.public_id}").json()
    resource.pop("events")  # the history and the RCPT refusals come with the one-row GET only
    resource.pop("refused_recipients")
    assert data == resource  # the same fields and values as the resource at that moment
    assert api.get("/v1/outbound").json()["data"] == [resource]


def test_events_refused_submission_writes_no_event(config, account, reconfigure):
    config["plans"]["free"]["daily_send_limit"] = 0
    reconfigure()
    with pytest.raises(QuotaExceeded):
        core_submit.submit(account.user, account.inbox, account.address, ["rcpt@example.com"],
                           io.BytesIO(make_message(account.address)), via="api")

    assert public_events() == []


def test_events_relay_writes_sent_once_and_failed_once(relay_config, account, submit, reconfigure):
    sent = submit()
    assert jobs.relay_outbound(sent.id) == "sent"
    assert jobs.relay_outbound(sent.id) == "skipped"  # a second run changes nothing: no second event
    assert [k for k, _ in public_events(outbound=sent.id)] == ["outbound.queued", "outbound.sent"]

    relay_config["relay"]["max_attempts"] = 1
    reconfigure()
    doomed = submit(recipients=("rcpt@example.com",))
    with models.db.connection_context():  # the blob is gone: every attempt fails, then the row is failed
        models.OutboundEmail.update(message=None).where(models.OutboundEmail.id == doomed.id).execute()
    jobs.relay_outbound(doomed.id)
    jobs.relay_outbound(doomed.id)
    kinds = [k for k, _ in public_events(outbound=doomed.id)]
    assert kinds == ["outbound.queued", "outbound.failed"]
    assert public_events(outbound=doomed.id)[-1][1]["status"] == "failed"


def test_events_domain_verified_then_failed(config, account, dns_server, reconfigure):
    with models.db.connection_context():
        domain = domains.add_domain(account.user, "mail.example.com")
    publish(dns_server, domains.expected_records(domain))
    assert domains.check_domain(domain.id).status == "verified"
    dns_server.clear()
    config["dns"]["recheck_grace"] = 0

    with models.db.connection_context():
        models.Domain.update(failing_since=models.utcnow() - datetime.timedelta(seconds=10)).where(
            models.Domain.id == domain.id).execute()
    reconfigure()
    assert domains.check_domain(domain.id).status == "failed"

    kinds = [(k, d["domain"], d["status"]) for k, d in public_events(user=account.user.id)]
    assert kinds == [("domain.verified", "mail.example.com", "verified"),
                     ("domain.failed", "mail.example.com", "failed")]


def test_events_prune_drops_events_past_retention_with_their_deliveries(webhook_config, api, account, submit,
                                                                         receiver):
    add_endpoint(api, receiver)
    old, new = submit(), submit()
    with models.db.connection_context():
        models.Event.update(created_at=models.utcnow() - datetime.timedelta(days=31)).where(
            models.Event.outbound == old.id).execute()

    assert events.prune() == 1

    with models.db.connection_context():
        assert [e.outbound_id for e in models.Event.select()] == [new.id]
        assert models.WebhookDelivery.select().count() == 1


def test_webhook_failing_for_days_disables_endpoint_and_emails_owner(webhook_config, api, account, submit,
                                                                     receiver, reconfigure):
    webhook_config["webhooks"].update(retry_schedule="0s", disable_after=0)
    reconfigure()
    endpoint = add_endpoint(api, receiver, events=["outbound.queued"])
    receiver.script = [500, 500]
    submit()

    wait_until(lambda: deliver_pending() == 0 and not api.get(f"/v1/webhooks/{endpoint['id']}").json()["enabled"],
               timeout=30, interval=0.2, what="the endpoint to be disabled")

    shown = api.get(f"/v1/webhooks/{endpoint['id']}").json()
    assert shown["disabled_reason"].startswith("every delivery failed since ")
    assert [r["status"] for r in receiver.requests] == [500, 500]
    with models.db.connection_context():
        notice = models.OutboundEmail.select().where(
            models.OutboundEmail.recipients == json.dumps([account.user.email])).get()
        message = models.Message.get_by_id(notice.message_id)
    assert notice.mail_from == account.address
    assert message.subject == "Inboxlayer: a webhook endpoint was disabled"


def test_events_smtp_recipient_refused_at_rcpt_gives_outbound_refused(config, account, api, smtp_server,
                                                                      smtp_client):
    assert api.post("/v1/suppressions", json={"address": "bob@x.com", "reason": "asked to stop"}).status_code == 201
    client = smtp_client(account.address, account.token)
    client.mail(account.address)
    assert client.rcpt("carol@x.com")[0] == 250
    refusal = client.rcpt("bob@x.com")
    assert refusal[0] == 550
    code, text = client.data(make_message(account.address, to="carol@x.com, bob@x.com"))
    assert code == 250

    with models.db.connection_context():
        row = models.OutboundEmail.get()
    kinds = [(k, d.get("refused_recipients")) for k, d in public_events(outbound=row.id)]
    assert kinds == [("outbound.queued", None), ("outbound.refused", [
        {"address": "bob@x.com", "reason": f"{refusal[0]} {refusal[1].decode()}"}])]


def test_events_two_complaints_pause_the_inbox_with_an_event(relay_config, account, submit, sns):
    rows = [submit(recipients=[f"c{i}@list.example"]) for i in range(2)]
    for i, row in enumerate(rows):
        assert jobs.relay_outbound(row.id) == "sent"
        with models.db.connection_context():
            sent_row = models.OutboundEmail.get_by_id(row.id)
        sns.post(json.dumps(sns.signed(ses_event_for(sent_row, i))))

    paused = [(d["inbox"], d["paused_reason"]) for k, d in public_events(type="inbox.paused")]
    assert paused == [(account.address, "2 complaints in the last 24 h")]


def ses_event_for(row, i):
    from tests.fixtures_relay import ses_event

    return ses_event("Complaint", row, complaintFeedbackType="abuse",
                     complainedRecipients=[{"emailAddress": f"c{i}@list.example"}])
