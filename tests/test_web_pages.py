"""Dashboard pages through the Flask test client: API keys, inboxes, Sent, Outbound, usage."""
import io
import json
import re
from email.message import EmailMessage

import pytest

import models
from core import accounts
from core import errors
from core import submit as core_submit
from core.text import BIDI_CONTROLS


def user_row(web):
    with models.db.connection_context():
        return models.User.get(models.User.email == web.email)


def inbox_row(inbox_id):
    with models.db.connection_context():
        return models.Inbox.get_by_id(inbox_id)


def submit(web, inbox_id, subject="Hello", to="someone@example.net", html=None, text="Plain body\n"):
    """Put a message through the one submit path, as SMTP and REST do."""
    inbox = inbox_row(inbox_id)
    msg = EmailMessage()
    msg["From"] = f"Agent <{inbox.address}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    msg.add_attachment(b"%PDF-1.4 test", maintype="application", subtype="pdf", filename="report.pdf")
    raw = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with models.db.connection_context():  # check_sender reads inbox.domain
        return core_submit.submit(user_row(web), inbox, inbox.address, [to], io.BytesIO(raw), "smtp")


# -- API keys ---------------------------------------------------------------------------------------

def test_api_key_create_shows_full_token_once(web):
    response = web.post("/account/keys/", {"name": "support agent"})
    page = response.get_data(as_text=True)
    token = re.search(r'id="new-token-value"[^>]*>(il_[^<]+)<', page).group(1)
    assert response.headers["Cache-Control"] == "no-store"
    assert 'data-copy="new-token-value"' in page
    with models.db.connection_context():
        row = accounts.lookup_token(token)
        assert row.name == "support agent" and row.user.email == web.email
    listing = web.get("/account/keys/").get_data(as_text=True)
    assert token not in listing
    assert f"{token[:12]}…" in listing and "support agent" in listing


def test_api_key_list_shows_last_used(web):
    token = web.create_token("used")
    with models.db.connection_context():
        accounts.lookup_token(token)
    listing = web.get("/account/keys/").get_data(as_text=True)
    row_html = listing.split("data-token-id")[1]
    last_used = re.search(r'<td data-label="Last used">(.*?)</td>', row_html.split("</tr>")[0]).group(1)
    assert "UTC" in last_used  # the "Last used" column has a time


def test_api_key_revoke_takes_effect_immediately(web):
    token = web.create_token("doomed")
    with models.db.connection_context():
        token_id = accounts.lookup_token(token).id
    response = web.post(f"/account/keys/{token_id}/revoke")
    assert response.status_code == 302
    with models.db.connection_context():
        assert accounts.lookup_token(token) is None
    listing = web.get("/account/keys/").get_data(as_text=True)
    assert "revoked" in listing
    assert f"/account/keys/{token_id}/revoke" not in listing
    again = web.post(f"/account/keys/{token_id}/revoke")
    assert again.status_code == 302


# -- inboxes ---------------------------------------------------------------------------------------

def test_inbox_create_on_default_domain_and_show_smtp_settings(web, config):
    inbox_id = web.create_inbox("support-bot")
    page = web.get(f"/inboxes/{inbox_id}").get_data(as_text=True)
    assert "support-bot@inboxlayer.dev" in page
    assert f'<code id="smtp-host">{config["smtp"]["public_host"]}</code>' in page
    assert f'<code>{config["smtp"]["starttls_port"]}</code> (STARTTLS, recommended)' in page
    assert f'<code>{config["smtp"]["tls_port"]}</code> (implicit TLS)' in page
    assert f'<code id="imap-host">{config["smtp"]["public_host"]}</code>' in page
    assert f'<code>{config["imap"]["tls_port"]}</code> (implicit TLS, recommended)' in page
    assert f'<code>{config["imap"]["starttls_port"]}</code> (STARTTLS)' in page
    assert '<code id="imap-user">support-bot@inboxlayer.dev</code>' in page
    assert "--auth-user support-bot@inboxlayer.dev" in page
    assert 'smtp.login("support-bot@inboxlayer.dev", os.environ["INBOXLAYER_TOKEN"])' in page
    assert "25 MB" in page and "of 500 sends today" in page


def test_inbox_show_uses_production_ports_from_settings(web, config, reconfigure):
    config["smtp"]["starttls_port"], config["smtp"]["tls_port"] = 587, 465
    config["smtp"]["public_host"] = "smtp.inboxlayer.dev"
    reconfigure()
    inbox_id = web.create_inbox("prod")
    page = web.get(f"/inboxes/{inbox_id}").get_data(as_text=True)
    assert "<code>587</code> (STARTTLS, recommended)" in page and "<code>465</code> (implicit TLS)" in page
    assert "swaks --server smtp.inboxlayer.dev --port 587 --tls" in page


def test_inbox_delete_refused_while_a_message_is_being_sent(web):
    inbox_id = web.create_inbox("busy")
    submit(web, inbox_id)
    web.post(f"/inboxes/{inbox_id}/delete")
    page = web.get(f"/inboxes/{inbox_id}").get_data(as_text=True)
    assert "1 message from busy@inboxlayer.dev is still being sent." in page


def test_inbox_list_and_delete_removes_sent_and_outbound(web):
    inbox_id = web.create_inbox("temp")
    outbound = submit(web, inbox_id)
    with models.db.connection_context():
        models.OutboundEmail.update(status="delivered").where(models.OutboundEmail.id == outbound.id).execute()
    listing = web.get("/inboxes/")
    assert listing.status_code == 200
    assert f'<a href="/inboxes/{inbox_id}">temp@inboxlayer.dev</a>' in listing.get_data(as_text=True)
    response = web.post(f"/inboxes/{inbox_id}/delete")
    assert response.headers["Location"] == "/inboxes/"
    with models.db.connection_context():
        assert models.Inbox.get_or_none(models.Inbox.id == inbox_id) is None
        assert models.OutboundEmail.get_or_none(models.OutboundEmail.id == outbound.id) is None
        assert models.Message.select().count() == 0
    assert web.get(f"/inboxes/{inbox_id}").status_code == 404


def test_inbox_on_pending_domain_is_created_but_cannot_send(web, dns_server):
    domain_id = web.add_domain("agents.example.org")
    inbox_id = web.create_inbox("bot", domain_id)
    page = web.get(f"/inboxes/{inbox_id}").get_data(as_text=True)
    assert "Domain agents.example.org is not verified. This inbox cannot send" in page
    with pytest.raises(errors.DomainNotVerified) as refused:
        submit(web, inbox_id)
    assert refused.value.smtp_reply == "550 5.7.1 Domain agents.example.org is not verified"


# -- Sent -------------------------------------------------------------------------------------------

def test_sent_list_view_and_download(web):
    inbox_id = web.create_inbox("writer")
    outbound = submit(web, inbox_id, subject="Quarterly <report>", text="Numbers inside\n")
    listing = web.get(f"/inboxes/{inbox_id}/sent/").get_data(as_text=True)
    assert "Quarterly &lt;report&gt;" in listing and "someone@example.net" in listing
    message_id = outbound.message_id
    page = web.get(f"/inboxes/{inbox_id}/sent/{message_id}").get_data(as_text=True)
    assert "Numbers inside" in page and "report.pdf" in page and "Message-ID" in page
    assert f"/outbound/{outbound.public_id}" in page
    download = web.get(f"/inboxes/{inbox_id}/sent/{message_id}.eml")
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "message/rfc822"
    assert download.headers["Content-Disposition"] == f"attachment; filename={outbound.public_id}.eml"
    assert b"Subject: Quarterly <report>" in download.data and b"Numbers inside" in download.data


def test_sent_html_part_is_sandboxed(web):
    inbox_id = web.create_inbox("html")
    outbound = submit(web, inbox_id, html="<p>Hi</p><script>parent.document.title='pwned'</script>")
    page = web.get(f"/inboxes/{inbox_id}/sent/{outbound.message_id}").get_data(as_text=True)
    iframe = re.search(r"<iframe[^>]*>", page).group(0)
    assert " sandbox " in iframe and "allow-" not in iframe
    assert "<script>parent" not in page
    part = web.get(f"/inboxes/{inbox_id}/sent/{outbound.message_id}/html")
    assert part.headers["Content-Security-Policy"] == (
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; frame-ancestors 'self'")
    assert part.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert b"<p>Hi</p>" in part.data


def test_sent_list_is_paged(web):
    inbox_id = web.create_inbox("busy")
    for n in range(27):
        submit(web, inbox_id, subject=f"Message {n:02d}")
    first = web.get(f"/inboxes/{inbox_id}/sent/").get_data(as_text=True)
    second = web.get(f"/inboxes/{inbox_id}/sent/?page=2").get_data(as_text=True)
    assert "Page 1 of 2" in first and "Message 26" in first and "Message 01" not in first
    assert "Message 01" in second and "Message 00" in second and "Message 26" not in second
    assert web.get(f"/inboxes/{inbox_id}/sent/?page=abc").status_code == 200


def test_sent_message_missing_blob_is_503_not_500(web):
    inbox_id = web.create_inbox("lost")
    outbound = submit(web, inbox_id)
    from core import blobs

    with models.db.connection_context():
        blobs.store().delete(models.Message.get_by_id(outbound.message_id).blob_key)
    response = web.get(f"/inboxes/{inbox_id}/sent/{outbound.message_id}")
    assert response.status_code == 503
    assert "The stored copy of this message is unavailable" in response.get_data(as_text=True)


# -- Outbound ---------------------------------------------------------------------------------------

def test_outbound_list_filters_by_inbox_status_and_date(web):
    first = web.create_inbox("first")
    second = web.create_inbox("second")
    a = submit(web, first, subject="A")
    b = submit(web, second, subject="B")
    with models.db.connection_context():
        models.OutboundEmail.update(status="bounced").where(models.OutboundEmail.id == b.id).execute()
    all_rows = web.get("/outbound/").get_data(as_text=True)
    assert a.public_id in all_rows and b.public_id in all_rows
    by_inbox = web.get(f"/outbound/?inbox={first}").get_data(as_text=True)
    assert a.public_id in by_inbox and b.public_id not in by_inbox
    by_status = web.get("/outbound/?status=bounced").get_data(as_text=True)
    assert b.public_id in by_status and a.public_id not in by_status
    today = models.utcnow().date().isoformat()
    assert a.public_id in web.get(f"/outbound/?since={today}&until={today}").get_data(as_text=True)
    assert a.public_id not in web.get("/outbound/?until=2000-01-01").get_data(as_text=True)


@pytest.mark.parametrize("query, message", [
    ("status=lost", "Status must be one of: queued, sending, sent"),
    ("since=yesterday", "From date must be a date like 2026-01-31."),
    ("until=2026-13-01", "To date must be a date like 2026-01-31."),
    ("inbox=999999", "Unknown inbox."),
    ("inbox=%3Cscript%3E", "Unknown inbox."),
])
def test_outbound_list_bad_filter_shows_message(web, query, message):
    response = web.get(f"/outbound/?{query}")
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)


def test_outbound_detail_shows_event_timeline_with_diagnostic(web):
    inbox_id = web.create_inbox("timeline")
    outbound = submit(web, inbox_id)
    with models.db.connection_context(), models.db.atomic():
        models.OutboundEvent.create(outbound=outbound, type="sent", detail=json.dumps({"ses_message_id": "abc-123"}))
        # The shape core.ses_events records for an SES Bounce event.
        models.OutboundEvent.create(outbound=outbound, type="bounced", detail=json.dumps({
            "ses_message_id": "abc-123", "sns_message_id": "sns-1", "bounce": {
                "bounceType": "Permanent", "bounceSubType": "General", "feedbackId": "f-1",
                "bouncedRecipients": [{"emailAddress": "someone@example.net", "action": "failed",
                                       "status": "5.1.1",
                                       "diagnosticCode": "smtp; 550 5.1.1 <someone@example.net>: user unknown"}]}}))
        models.OutboundEmail.update(status="bounced").where(models.OutboundEmail.id == outbound.id).execute()
    page = web.get(f"/outbound/{outbound.public_id}").get_data(as_text=True)
    timeline = page.split('id="timeline"')[1]
    assert timeline.index("queued") < timeline.index("sent") < timeline.index("bounced")
    assert "<dt>diagnosticCode</dt><dd>smtp; 550 5.1.1 &lt;someone@example.net&gt;: user unknown</dd>" in timeline
    assert "<dt>bounceType</dt><dd>Permanent</dd>" in timeline
    assert "sns-1" not in timeline and "f-1" not in timeline
    assert '<dd id="outbound-status">bounced</dd>' in page


def test_outbound_list_and_detail_show_subject(web):
    inbox_id = web.create_inbox("subjects")
    titled = submit(web, inbox_id, subject="Quarterly <report> für Q3")
    untitled = submit(web, inbox_id, subject="")
    orphan = submit(web, inbox_id, subject="Gone")
    with models.db.connection_context():  # the Sent copy is a nullable link (ON DELETE SET NULL)
        models.OutboundEmail.update(message=None).where(models.OutboundEmail.id == orphan.id).execute()
    listing = web.get("/outbound/").get_data(as_text=True)
    rows = {row.split("</code>")[0].rsplit(">", 1)[1]: row for row in listing.split("<tr>")[2:]}
    assert '<td class="clip subject" data-label="Subject">Quarterly &lt;report&gt; für Q3</td>' in rows[titled.public_id]
    assert '<td class="clip subject" data-label="Subject"><span class="muted">(no subject)</span></td>' in rows[untitled.public_id]
    assert '<td class="clip subject" data-label="Subject"><span class="muted">(no stored copy)</span></td>' in rows[orphan.public_id]
    detail = web.get(f"/outbound/{titled.public_id}").get_data(as_text=True)
    assert '<dd id="outbound-subject">Quarterly &lt;report&gt; für Q3</dd>' in detail


@pytest.mark.parametrize("status, shown", [
    ("queued", "not yet (SES has not accepted it)"),
    ("sending", "not yet (SES has not accepted it)"),
    ("failed", "none (failed before SES accepted it)"),
])
def test_outbound_detail_ses_message_id_says_why_it_is_missing(web, status, shown):
    inbox_id = web.create_inbox("no-ses-id")
    outbound = submit(web, inbox_id)
    with models.db.connection_context():
        models.OutboundEmail.update(status=status, last_error="MessageRejected: Email address is not verified.") \
            .where(models.OutboundEmail.id == outbound.id).execute()
    page = web.get(f"/outbound/{outbound.public_id}").get_data(as_text=True)
    assert f'<dd id="outbound-ses-id"><span class="muted">{shown}</span></dd>' in page


def test_outbound_detail_shows_ses_message_id_once_sent(web):
    inbox_id = web.create_inbox("ses-id")
    outbound = submit(web, inbox_id)
    with models.db.connection_context():
        models.OutboundEmail.update(status="sent", ses_message_id="0100018c-abc").where(
            models.OutboundEmail.id == outbound.id).execute()
    page = web.get(f"/outbound/{outbound.public_id}").get_data(as_text=True)
    assert '<dd id="outbound-ses-id"><code>0100018c-abc</code></dd>' in page


# -- usage ------------------------------------------------------------------------------------------

def test_dashboard_counts_keys_inboxes_domains(web):
    web.create_token("one")
    web.create_token("two")
    web.create_inbox("counted")
    page = web.get("/dashboard").get_data(as_text=True)
    counts = re.findall(r'<span class="stat-n">([^<]*)</span><span>([^<]+)</span>', page)
    assert counts == [("1", "inboxes"), ("2", "active API keys"), ("0", "custom domains")]


def test_usage_bar_counts_todays_sends(web):
    inbox_id = web.create_inbox("counter")
    submit(web, inbox_id)
    submit(web, inbox_id)
    page = web.get("/dashboard").get_data(as_text=True)
    assert "<strong>2</strong> of 500 sends today" in page
    assert re.search(r'<meter class="usage-bar" min="0" max="500"[^>]*value="2"', page)


def submit_raw(web, inbox_id, raw):
    inbox = inbox_row(inbox_id)
    with models.db.connection_context():
        return core_submit.submit(user_row(web), inbox, inbox.address, ["someone@example.net"],
                                 io.BytesIO(raw.replace(b"\n", b"\r\n")), "smtp")


def test_sent_attachment_filename_bidi_controls_are_shown(web):
    # What a right-to-left override does to a name: "invoice\u202efdp.exe" reads "invoiceexe.pdf".
    inbox_id = web.create_inbox("bidi")
    msg = EmailMessage()
    msg["From"] = inbox_row(inbox_id).address
    msg["To"] = "someone@example.net"
    msg["Subject"] = "Invoice"
    msg.set_content("See attached.\n")
    msg.add_attachment(b"MZ", maintype="application", subtype="octet-stream", filename="invoice\u202efdp.exe")
    msg.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="\u2067\u05d3\u05d5\u05d7\u2069.pdf")
    outbound = submit_raw(web, inbox_id, msg.as_bytes().replace(b"\r\n", b"\n"))
    page = web.get(f"/inboxes/{inbox_id}/sent/{outbound.message_id}").get_data(as_text=True)
    assert '<bdi class="filename">invoice[U+202E]fdp.exe</bdi>' in page
    assert '<bdi class="filename">[U+2067]\u05d3\u05d5\u05d7[U+2069].pdf</bdi>' in page
    assert not set(page) & BIDI_CONTROLS


@pytest.mark.parametrize("body", [
    b"Content-Type: text/plain; charset=x-no-such-charset\n\nbytes \xff\xfe here\n",
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n!!!not base64===\n",
    b"Content-Type: text/html\n\n<p>only html</p>\n",
    b"Content-Type: multipart/mixed; boundary=\"never-closed\"\n\n--never-closed\nContent-Type: text/plain\n\nhalf\n",
    b"Subject: =?utf-8?B?broken?= =?x-unknown?Q?x?=\nContent-Type: text/plain\n\nodd subject\n",
    b"Content-Type: application/octet-stream\n\n\x00\x01\x02\n",
])
def test_sent_view_survives_malformed_messages(web, body):
    inbox_id = web.create_inbox("odd")
    raw = b"From: odd@inboxlayer.dev\nTo: someone@example.net\n" + (b"Subject: odd\n" if b"Subject" not in body else b"") + body
    outbound = submit_raw(web, inbox_id, raw)
    for suffix in ("", ".eml"):
        response = web.get(f"/inboxes/{inbox_id}/sent/{outbound.message_id}{suffix}")
        assert response.status_code == 200, suffix
    html_part = web.get(f"/inboxes/{inbox_id}/sent/{outbound.message_id}/html")
    assert html_part.status_code in (200, 404)
    assert web.get(f"/inboxes/{inbox_id}/sent/").status_code == 200


# -- domains ----------------------------------------------------------------------------------------

def test_domain_verified_through_check_now_lets_its_inbox_send(web, dns_server):
    from core import domains
    from tests.dnsserver import publish

    domain_id = web.add_domain("send.example.org")
    inbox_id = web.create_inbox("bot", domain_id)
    with models.db.connection_context():
        publish(dns_server, domains.expected_records(models.Domain.get_by_id(domain_id)))
    response = web.post(f"/domains/{domain_id}/check")
    assert response.headers["Location"] == f"/domains/{domain_id}"
    page = web.get(f"/domains/{domain_id}").get_data(as_text=True)
    assert "send.example.org is verified. Inboxes on it can send." in page
    assert submit(web, inbox_id).status == "queued"


def test_domain_delete_refused_while_it_has_inboxes(web, ses_endpoint):
    import boto3

    domain_id = web.add_domain("gone.example.org")
    inbox_id = web.create_inbox("bot", domain_id)
    web.post(f"/domains/{domain_id}/delete")
    page = web.get(f"/domains/{domain_id}").get_data(as_text=True)
    assert "Delete the inboxes on gone.example.org first" in page
    web.post(f"/inboxes/{inbox_id}/delete")
    response = web.post(f"/domains/{domain_id}/delete")
    assert response.headers["Location"] == "/domains/"
    assert web.get(f"/domains/{domain_id}").status_code == 404
    identities = boto3.client("sesv2", endpoint_url=ses_endpoint, region_name="us-east-1").list_email_identities()
    assert "gone.example.org" not in [i["IdentityName"] for i in identities["EmailIdentities"]]


def test_domain_check_now_is_rate_limited(web, dns_server):
    from webapp import domains

    domain_id = web.add_domain("busy.example.org")
    for _ in range(domains.MAX_CHECKS_PER_WINDOW):
        web.post(f"/domains/{domain_id}/check")
    queries = len(dns_server.queries)
    web.post(f"/domains/{domain_id}/check")
    page = web.get(f"/domains/{domain_id}").get_data(as_text=True)
    assert "please wait a minute before checking again" in page
    assert len(dns_server.queries) == queries  # no lookups for the refused check
