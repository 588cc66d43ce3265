"""SES events through SNS into POST /webhooks/ses: genuine moto signatures, forgeries, replays."""
import datetime
import json

import pytest

import models
from core import ses_events
from smtpd_worker import jobs
from tests.fixtures_relay import events_of
from tests.fixtures_relay import make_message
from tests.fixtures_relay import outbound
from tests.fixtures_relay import ses_event

BOUNCE = {"bounceType": "Permanent", "bounceSubType": "NoEmail", "feedbackId": "fb-1",
          "bouncedRecipients": [{"emailAddress": "rcpt@example.com", "action": "failed", "status": "5.1.1",
                                 "diagnosticCode": "smtp; 550 5.1.1 <rcpt@example.com>: user unknown"}]}


@pytest.fixture
def sent_row(relay_config, submit):
    row = submit()
    assert jobs.relay_outbound(row.id) == "sent"
    return outbound(row.id)


def test_sns_delivery_from_moto_marks_delivered(sent_row, sns):
    response = sns.publish(ses_event("Delivery", sent_row, recipients=["rcpt@example.com"],
                                     smtpResponse="250 2.0.0 OK"))

    assert (response.status_code, response.json()) == (200, {"status": "applied"})
    row = outbound(sent_row.id)
    assert row.status == "delivered"
    assert row.completed_at is not None
    assert events_of(row.id)[-1][0] == "delivered"


def test_sns_bounce_from_moto_keeps_type_subtype_and_diagnostic(sent_row, sns):
    response = sns.publish(ses_event("Bounce", sent_row, **BOUNCE))

    assert response.status_code == 200
    row = outbound(sent_row.id)
    assert row.status == "bounced"
    assert row.last_error == ("Bounce Permanent/NoEmail: rcpt@example.com: "
                              "smtp; 550 5.1.1 <rcpt@example.com>: user unknown")
    kind, detail = events_of(row.id)[-1]
    assert kind == "bounced"
    assert detail["bounce"]["bounceSubType"] == "NoEmail"
    assert detail["bounce"]["bouncedRecipients"][0]["status"] == "5.1.1"


def test_sns_complaint_from_moto_marks_complained(sent_row, sns):
    response = sns.publish(ses_event("Complaint", sent_row, complaintFeedbackType="abuse",
                                     complainedRecipients=[{"emailAddress": "rcpt@example.com"}]))

    assert response.status_code == 200
    row = outbound(sent_row.id)
    assert row.status == "complained"
    assert row.last_error == "Complaint (abuse) from rcpt@example.com"


def test_sns_notification_replayed_gets_409_and_changes_nothing(sent_row, sns):
    sns.publish(ses_event("Delivery", sent_row))
    genuine = sns.repoint(sns.received[-1])
    history = events_of(sent_row.id)

    response = sns.post(genuine)

    assert (response.status_code, response.json()) == (409, {"error": "notification already processed"})
    assert events_of(sent_row.id) == history


def test_sns_notification_with_forged_message_gets_403(sent_row, sns):
    sns.publish(ses_event("DeliveryDelay", sent_row, delayType="MailboxFull"))
    envelope = json.loads(sns.repoint(sns.received[-1]))
    envelope["Message"] = json.dumps(ses_event("Bounce", sent_row, **BOUNCE))  # same signature, new content
    envelope["MessageId"] = "forged-1"

    response = sns.post(json.dumps(envelope))

    assert (response.status_code, response.json()) == (403, {"error": "signature does not verify"})
    assert outbound(sent_row.id).status == "sent"


def test_sns_notification_with_certificate_from_unlisted_host_gets_403(sent_row, sns):
    # Exactly what moto posts: the certificate URL names sns.us-east-1.amazonaws.com, which the
    # test allowlist (127.0.0.1, localhost) does not contain.
    sns.publish(ses_event("DeliveryDelay", sent_row))
    as_posted = json.loads(sns.received[-1])
    as_posted["MessageId"] = "another-id"

    response = sns.post(json.dumps(as_posted))

    assert (response.status_code, response.json()) == (403, {"error": "SigningCertURL host is not allowed"})


def test_sns_certificate_on_attacker_host_with_own_key_gets_403(sent_row, sns):
    envelope = sns.signed(ses_event("Bounce", sent_row, **BOUNCE))
    envelope["SigningCertURL"] = "https://attacker.example/cert.pem"

    response = sns.post(json.dumps(envelope))

    assert response.status_code == 403
    assert outbound(sent_row.id).status == "sent"


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_signature_versions_accepted(sent_row, sns, version):
    response = sns.post(json.dumps(sns.signed(ses_event("Delivery", sent_row), version=version)))

    assert (response.status_code, response.json()) == (200, {"status": "applied"})
    assert outbound(sent_row.id).status == "delivered"


def test_sns_stale_timestamp_gets_400(sent_row, sns):
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    response = sns.post(json.dumps(sns.signed(ses_event("Delivery", sent_row), timestamp=old)))

    assert (response.status_code, response.json()) == (400, {"error": "stale or future Timestamp"})
    assert outbound(sent_row.id).status == "sent"


def test_sns_late_delivery_never_overwrites_bounce(sent_row, sns):
    sns.post(json.dumps(sns.signed(ses_event("Bounce", sent_row, **BOUNCE))))

    response = sns.post(json.dumps(sns.signed(ses_event("Delivery", sent_row))))

    assert (response.status_code, response.json()) == (200, {"status": "recorded"})
    row = outbound(sent_row.id)
    assert row.status == "bounced"
    assert [t for t, _ in events_of(row.id)][-2:] == ["bounced", "delivered"]


def test_sns_delivery_delay_is_history_only(sent_row, sns):
    response = sns.post(json.dumps(sns.signed(ses_event("DeliveryDelay", sent_row, delayType="MailboxFull"))))

    assert (response.status_code, response.json()) == (200, {"status": "recorded"})
    assert outbound(sent_row.id).status == "sent"


def test_sns_event_settles_row_whose_worker_died_before_recording(relay_config, submit, sns):
    # The at-least-once window: SES accepted (its id is only in the event), the row says sending.
    row = submit()
    with models.db.connection_context():
        models.OutboundEmail.update(status="sending", attempts=1).where(models.OutboundEmail.id == row.id).execute()
        row = models.OutboundEmail.get_by_id(row.id)
    row.ses_message_id = "0100018c-accepted-but-unrecorded"

    response = sns.post(json.dumps(sns.signed(ses_event("Delivery", row))))

    assert response.status_code == 200
    settled = outbound(row.id)
    assert (settled.status, settled.ses_message_id) == ("delivered", "0100018c-accepted-but-unrecorded")


def test_sns_subscription_confirmation_visits_subscribe_url(relay_config, sns):
    envelope = sns.signed("You have chosen to subscribe", type_="SubscriptionConfirmation", Token="tok-1",
                          SubscribeURL=f"{sns.url}/confirm?Action=ConfirmSubscription&Token=tok-1")

    response = sns.post(json.dumps(envelope))

    assert (response.status_code, response.json()) == (200, {"status": "subscription confirmed"})
    assert sns.confirmations == [{"Action": ["ConfirmSubscription"], "Token": ["tok-1"]}]


def test_sns_subscription_confirmation_to_unlisted_host_is_not_visited(relay_config, sns):
    envelope = sns.signed("You have chosen to subscribe", type_="SubscriptionConfirmation", Token="tok-2",
                          SubscribeURL="https://internal.example/admin?Token=tok-2")

    response = sns.post(json.dumps(envelope))

    assert (response.status_code, response.json()) == (403, {"error": "SubscribeURL host is not allowed"})
    assert sns.confirmations == []


@pytest.mark.parametrize("body, status", [
    (b"not json", 400),
    (b"[]", 400),
    (json.dumps({"Type": "Notification"}).encode(), 400),
    (json.dumps({"Type": "Bogus", "Message": "x"}).encode(), 400),
])
def test_sns_malformed_body_gets_400(relay_config, sns, body, status):
    response = sns.post(body)

    assert response.status_code == status
    assert "error" in response.json()


@pytest.mark.parametrize("url, allowed", [
    ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem", True),
    ("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem", False),  # http off loopback
    ("https://sns.us-east-1.amazonaws.com.evil.example/x.pem", False),
    ("https://user@sns.us-east-1.amazonaws.com/x.pem", False),
    ("http://127.0.0.1:9/x.pem", True),  # loopback test host may use http
])
def test_check_url_allowlist(config, url, allowed, reconfigure):
    config["ses"]["sns_cert_hosts"] = ["sns.us-east-1.amazonaws.com", "127.0.0.1"]
    reconfigure()
    try:
        ses_events.check_url(url, "SigningCertURL")
        outcome = True
    except ses_events.Rejected:
        outcome = False
    assert outcome is allowed


@pytest.mark.parametrize("mail_patch, expected", [
    ({"tags": ["not", "a", "dict"]}, (400, {"error": "malformed SES event"})),  # bouncedRecipients is no list
    ({"messageId": 12345, "tags": {"outbound_id": "not-a-list"}}, (200, {"status": "unknown"})),
])
def test_sns_signed_but_malformed_ses_event_gets_clear_answer(sent_row, sns, mail_patch, expected):
    event = ses_event("Bounce", sent_row, bouncedRecipients="not-a-list")
    event["mail"].update(mail_patch)

    response = sns.post(json.dumps(sns.signed(event)))

    assert (response.status_code, response.json()) == expected
    assert outbound(sent_row.id).status == "sent"
    assert [t for t, _ in events_of(sent_row.id)][-1] == "sent"


def test_sns_event_for_second_copy_is_recorded_as_duplicate_without_moving_status(sent_row, sns):
    copy = ses_event("Bounce", sent_row, **BOUNCE)
    copy["mail"]["messageId"] = "0100018c-the-second-copy"  # same outbound_id tag, other SES id

    response = sns.post(json.dumps(sns.signed(copy)))

    assert (response.status_code, response.json()) == (200, {"status": "recorded"})
    assert outbound(sent_row.id).status == "sent"
    kind, detail = events_of(sent_row.id)[-1]
    assert kind == "duplicate_copy"
    assert detail["ses_message_id"] == "0100018c-the-second-copy"


def test_sns_event_for_another_recipient_batch_moves_status(relay_config, account, submit, sns, ses_sent):
    row = submit(make_message(account.address, to="list@example.com"),
                 recipients=[f"r{n}@example.com" for n in range(60)])
    assert jobs.relay_outbound(row.id) == "sent"
    row = outbound(row.id)
    second = ses_event("Bounce", row, **BOUNCE)
    second["mail"]["messageId"] = ses_sent()[1]["id"]

    response = sns.post(json.dumps(sns.signed(second)))

    assert (response.status_code, response.json()) == (200, {"status": "applied"})
    assert outbound(row.id).status == "bounced"


def test_sns_topic_not_in_allowlist_gets_403(relay_config, sent_row, sns, reconfigure):
    relay_config["ses"]["sns_topic_arns"] = ["arn:aws:sns:us-east-1:123456789012:the-only-topic"]
    reconfigure()

    response = sns.post(json.dumps(sns.signed(ses_event("Delivery", sent_row))))

    assert (response.status_code, response.json()) == (403, {"error": "topic not accepted here"})
    assert outbound(sent_row.id).status == "sent"


def test_sns_unknown_signature_version_gets_400(sent_row, sns):
    envelope = sns.signed(ses_event("Delivery", sent_row))
    envelope["SignatureVersion"] = "3"

    response = sns.post(json.dumps(envelope))

    assert (response.status_code, response.json()) == (400, {"error": "unsupported SignatureVersion '3'"})


# -- topic allowlist (issue 10 item 4): a topic not listed is refused before anything is fetched ---

OTHER_TOPIC = "arn:aws:sns:us-east-1:123456789012:someone-elses-topic"


@pytest.fixture
def cert_recorder(sns):
    """A loopback host that serves the harness's test certificate and records every request."""
    from tests.fixtures_relay import serve_wsgi

    hits = []

    def app(environ, start_response):
        hits.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "application/x-pem-file")])
        return [sns.cert_pem]

    server, url = serve_wsgi(app)
    yield url, hits
    server.shutdown()


@pytest.mark.parametrize("allowed", [[], [OTHER_TOPIC]], ids=["empty-list", "other-topic"])
def test_sns_notification_from_unlisted_topic_is_refused_before_fetching_certificate(
        relay_config, sent_row, sns, cert_recorder, allowed, reconfigure):
    relay_config["ses"]["sns_topic_arns"] = allowed
    reconfigure()
    url, hits = cert_recorder
    envelope = sns.signed(ses_event("Bounce", sent_row, **BOUNCE), SigningCertURL=f"{url}/cert.pem")

    response = sns.post(json.dumps(envelope))

    assert (response.status_code, response.json()) == (403, {"error": "topic not accepted here"})
    assert hits == []
    assert outbound(sent_row.id).status == "sent"


@pytest.mark.parametrize("allowed", [[], [OTHER_TOPIC]], ids=["empty-list", "other-topic"])
def test_sns_subscription_from_unlisted_topic_is_not_confirmed(relay_config, sns, allowed, reconfigure):
    relay_config["ses"]["sns_topic_arns"] = allowed
    reconfigure()
    envelope = sns.signed("You have chosen to subscribe", type_="SubscriptionConfirmation", Token="tok-3",
                          SubscribeURL=f"{sns.url}/confirm?Action=ConfirmSubscription&Token=tok-3")

    response = sns.post(json.dumps(envelope))

    assert (response.status_code, response.json()) == (403, {"error": "topic not accepted here"})
    assert sns.confirmations == []


def test_sns_listed_topic_through_moto_still_applies(relay_config, sent_row, sns):
    assert relay_config["ses"]["sns_topic_arns"] == [sns.topic_arn]  # the fixture lists exactly its topic

    response = sns.publish(ses_event("Delivery", sent_row))

    assert (response.status_code, response.json()) == (200, {"status": "applied"})


@pytest.mark.parametrize("event_type", ["", None, 5, "Bounce; DROP", "x" * 65])
def test_sns_event_with_empty_or_bad_event_type_gets_400(sent_row, sns, event_type):
    event = ses_event("Bounce", sent_row, **BOUNCE)
    event["eventType"] = event_type
    event["notificationType"] = ""  # nothing to fall back on (was a 500: kind[0] of "")

    response = sns.post(json.dumps(sns.signed(event)))

    assert (response.status_code, response.json()) == (
        400, {"error": "Message is not an SES event: eventType is missing, empty or not a name"})
    assert outbound(sent_row.id).status == "sent"


def test_sns_genuine_notification_from_another_moto_topic_gets_403(relay_config, sent_row, sns):
    # The attack the allowlist stops: anyone's own SNS topic, subscribed to our webhook, publishes a
    # genuinely signed Bounce for one of our users' messages.
    other = sns.sns.create_topic(Name="attacker-topic")["TopicArn"]
    sns.sns.subscribe(TopicArn=other, Protocol="http", Endpoint=f"{sns.url}/sns")
    before = len(sns.forwarded)

    sns.sns.publish(TopicArn=other, Message=json.dumps(ses_event("Bounce", sent_row, **BOUNCE)))

    assert len(sns.forwarded) == before + 1, "moto did not deliver the notification"
    response = sns.forwarded[-1]
    assert (response.status_code, response.json()) == (403, {"error": "topic not accepted here"})
    assert outbound(sent_row.id).status == "sent"
