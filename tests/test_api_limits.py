"""Rate limit and daily quota on the REST API: 429 with Retry-After and X-RateLimit-*, and the
same counters as SMTP (a test mixes both against the real SMTP server and never exceeds either)."""
import calendar
import datetime
import smtplib
import time

import models
from tests.fixtures_api import send_body


def set_plan(reconfigure, config, **limits):
    config["plans"]["free"].update(limits)
    reconfigure()


def seconds_to_midnight():
    now = datetime.datetime.now(datetime.timezone.utc)
    midnight = datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time(),
                                         tzinfo=datetime.timezone.utc)
    return (midnight - now).total_seconds(), calendar.timegm(midnight.timetuple())


def test_api_rate_limit_is_429_with_retry_after(api, account, config, reconfigure):
    set_plan(reconfigure, config, send_burst=3, send_rate_per_second=0.1)
    for _ in range(3):
        assert api.post(f"/v1/inboxes/{account.address}/send", json=send_body()).status_code == 202
    response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body())
    assert response.status_code == 429
    assert response.json() == {"error": {"code": "rate_limited",
                                         "message": "Sending rate limit exceeded, try again later"}}
    assert 1 <= int(response.headers["Retry-After"]) <= 11
    assert response.headers["X-RateLimit-Limit"] == "500"
    assert response.headers["X-RateLimit-Remaining"] == "497"
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 3


def test_api_quota_is_429_naming_usage_and_reset(api, account, config, reconfigure):
    set_plan(reconfigure, config, daily_send_limit=3)
    ok = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to=["a@example.com", "b@example.com"]))
    assert ok.status_code == 202
    assert ok.headers["X-RateLimit-Limit"] == "3"
    assert ok.headers["X-RateLimit-Remaining"] == "1"
    refused = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to=["c@example.com", "d@example.com"]))
    assert refused.status_code == 429
    assert refused.json() == {"error": {"code": "quota_exceeded",
                                        "message": "Daily sending quota exceeded (2/3, resets 00:00 UTC)"}}
    to_midnight, reset_epoch = seconds_to_midnight()
    assert abs(int(refused.headers["Retry-After"]) - to_midnight) <= 5
    assert refused.headers["X-RateLimit-Reset"] == str(reset_epoch)
    assert refused.headers["X-RateLimit-Remaining"] == "1"
    last = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to="c@example.com"))
    assert last.status_code == 202
    assert last.headers["X-RateLimit-Remaining"] == "0"
    with models.db.connection_context():
        assert models.sends_today(account.user) == 3


def smtp_send(smtp_client, account, recipients):
    """One SMTP transaction; returns the final reply as 'code text' (the refusal, or the 250)."""
    client = smtp_client(account.address, account.token)
    message = (f"From: {account.address}\r\nTo: {', '.join(recipients)}\r\nSubject: via smtp\r\n\r\nhi\r\n")
    try:
        code, reply = client.mail(account.address)
        if code != 250:
            return f"{code} {reply.decode()}"
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            if code != 250:
                return f"{code} {reply.decode()}"
        code, reply = client.data(message.encode())
        return f"{code} {reply.decode()}"
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            pass


def test_quota_is_shared_by_smtp_and_api(api, account, config, start_smtp_server, smtp_client_for, reconfigure):
    set_plan(reconfigure, config, daily_send_limit=5)
    smtp = smtp_client_for(start_smtp_server(INBOXLAYER_PLANS_FREE_DAILY_SEND_LIMIT=5))
    assert api.post(f"/v1/inboxes/{account.address}/send",
                    json=send_body(to=["a@example.com", "b@example.com"])).status_code == 202
    assert smtp_send(smtp, account, ["c@example.com", "d@example.com"]).startswith("250 2.0.0 OK queued as ob_")
    # 4 of 5 used, by both paths together: two more fit neither way.
    refused = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to=["e@example.com", "f@example.com"]))
    assert refused.status_code == 429
    assert refused.json()["error"]["message"] == "Daily sending quota exceeded (4/5, resets 00:00 UTC)"
    assert smtp_send(smtp, account, ["e@example.com", "f@example.com"]) == \
        "550 5.4.5 Daily sending quota exceeded (4/5, resets 00:00 UTC)"
    assert smtp_send(smtp, account, ["e@example.com"]).startswith("250 2.0.0 OK queued as ob_")
    last = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(to="g@example.com"))
    assert last.status_code == 429
    assert last.json()["error"]["message"] == "Daily sending quota exceeded (5/5, resets 00:00 UTC)"
    with models.db.connection_context():
        assert models.sends_today(account.user) == 5
        assert sorted(o.via for o in models.OutboundEmail.select()) == ["api", "smtp", "smtp"]


def test_rate_limit_is_shared_by_smtp_and_api(api, account, config, start_smtp_server, smtp_client_for, reconfigure):
    # Plan rates are whole messages per second, so the burst refills after 1 s: the slow part
    # (TLS, AUTH) happens first and the rate-limited steps are cheap commands on an open session.
    set_plan(reconfigure, config, send_burst=3, send_rate_per_second=1)
    server = start_smtp_server(INBOXLAYER_PLANS_FREE_SEND_BURST=3, INBOXLAYER_PLANS_FREE_SEND_RATE_PER_SECOND=1)
    smtp = smtp_client_for(server)(account.address, account.token)
    api.get("/v1/account").raise_for_status()  # warm the HTTP connection too
    started = time.monotonic()
    assert api.post(f"/v1/inboxes/{account.address}/send", json=send_body()).status_code == 202
    assert smtp.mail(account.address) == (250, b"2.1.0 OK")  # MAIL FROM takes one send from the rate
    assert smtp.rset()[0] == 250
    assert api.post(f"/v1/inboxes/{account.address}/send", json=send_body()).status_code == 202
    # The burst of 3 is spent across both paths: the next is refused on either.
    refused_smtp = smtp.mail(account.address)
    refused_api = api.post(f"/v1/inboxes/{account.address}/send", json=send_body())
    elapsed = time.monotonic() - started
    assert elapsed < 0.9, f"took {elapsed:.2f}s: the 1/s rate refilled the burst, the check proves nothing"
    assert refused_smtp == (451, b"4.7.1 Sending rate limit exceeded, try again later")
    assert refused_api.status_code == 429
    assert refused_api.json()["error"]["code"] == "rate_limited"
