"""The typed Python client (inboxlayer_client) against the real app on a real socket: every
resource method, the error classes with their API codes, and the bounded Retry-After retry.
No HTTP is mocked; the CLI's own tests (test_cli_client.py) run the same client underneath."""
import datetime
import time
import urllib.error

import pytest

import inboxlayer_client as il
import models
from core import accounts
from core import keys
from tests.helpers import wait_until


def set_plan(config, reconfigure, **limits):
    config["plans"]["free"].update(limits)
    reconfigure()


@pytest.fixture
def client(api_server, account):
    return il.Inboxlayer(api_server, account.token)


def test_client_sends_reads_and_follows_a_message(client, account, tmp_path):
    report = tmp_path / "report.txt"
    report.write_bytes(b"all good\n")
    sent = client.send(account.address, to=["bob@example.com"], subject="Typed", text="Hello",
                       attachments=[report, il.Attachment("data.bin", b"\x00\x01", "application/octet-stream")],
                       idempotency_key="job-1")
    assert sent["status"] == "queued" and sent["id"].startswith("ob_")
    assert client.send(account.address, to=["bob@example.com"], subject="Typed", text="Hello",
                       attachments=[report, il.Attachment("data.bin", b"\x00\x01", "application/octet-stream")],
                       idempotency_key="job-1")["id"] == sent["id"]
    row = client.get_outbound(sent["id"])
    assert row["recipients"] == ["bob@example.com"] and [e["type"] for e in row["events"]] == ["queued"]
    assert [r["id"] for r in client.list_outbound(status="queued", inbox=account.address)["data"]] == [sent["id"]]
    page = client.list_sent(account.address, limit=1)
    assert page["data"][0]["outbound_id"] == sent["id"] and page["has_more"] is False
    message = client.read_sent_message(account.address, page["data"][0]["id"])
    assert message["subject"] == "Typed"
    assert sorted(a["filename"] for a in message["attachments"]) == ["data.bin", "report.txt"]
    usage = client.account()
    assert usage["quota"]["used"] == 1 and usage["email"] == account.email
    # The feed shows an event once it is a second old (core/events.py SETTLE).
    events = wait_until(lambda: (page := client.list_events(type="outbound.queued"))["data"] and page,
                        timeout=15, what="the queued event in the feed")
    assert [e["data"]["id"] for e in events["data"]] == [sent["id"]]
    assert client.list_events(after=events["next_cursor"])["data"] == []  # nothing newer than the cursor


def test_client_wait_times_out_with_the_last_status(client, account):
    sent = client.send(account.address, to=["bob@example.com"], subject="s", text="t")  # no worker: stays queued
    seen = []
    started = time.monotonic()
    with pytest.raises(il.WaitTimeout) as caught:
        client.wait_for_outbound(sent["id"], timeout=1.5, interval=0.5, on_poll=seen.append)
    assert 1.5 <= time.monotonic() - started < 10
    assert str(caught.value) == f"{sent['id']} is still queued after 1.5s"
    assert caught.value.row["status"] == "queued" and len(seen) >= 3


def test_client_quota_exceeded_names_the_reset_and_is_not_retried(client, account, config, reconfigure):
    set_plan(config, reconfigure, daily_send_limit=1)
    client.send(account.address, to=["a@example.com"], text="1")
    started = time.monotonic()
    with pytest.raises(il.QuotaExceeded) as caught:
        client.send(account.address, to=["b@example.com"], text="2")
    assert time.monotonic() - started < 5  # a Retry-After of hours is an answer, not a wait
    exc = caught.value
    assert (exc.status, exc.code) == (429, "quota_exceeded")
    assert exc.message == "Daily sending quota exceeded (1/1, resets 00:00 UTC)"
    midnight = datetime.datetime.now(datetime.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    assert exc.reset_at == midnight + datetime.timedelta(days=1)
    assert exc.retry_after > 0
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 1


def test_client_retries_rate_limited_after_retry_after(api_server, account, config, reconfigure):
    set_plan(config, reconfigure, send_burst=1, send_rate_per_second=1)
    impatient = il.Inboxlayer(api_server, account.token, max_retries=0)
    impatient.send(account.address, to=["a@example.com"], text="1")
    with pytest.raises(il.RateLimited) as caught:
        impatient.send(account.address, to=["b@example.com"], text="2")
    assert caught.value.code == "rate_limited" and caught.value.retry_after >= 1
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        time.sleep(seconds)

    patient = il.Inboxlayer(api_server, account.token, sleep=sleep)
    sent = patient.send(account.address, to=["c@example.com"], text="3")
    assert sent["status"] == "queued"
    assert waits and all(1 <= w <= il.MAX_RETRY_WAIT for w in waits) and len(waits) <= il.MAX_RETRIES


def test_client_errors_carry_the_api_codes(api_server, client, account, config):
    with models.db.connection_context():
        other = accounts.create_inbox(account.user, "other", None, config["server"]["default_domain"])
        scoped = accounts.create_token(account.user, "scoped", keys.Scope(inbox_ids=frozenset({account.inbox.id})))[1]
    narrow = il.Inboxlayer(api_server, scoped)
    with pytest.raises(il.KeyScope) as caught:
        narrow.send(other.address, to=["a@example.com"], text="x")
    assert (caught.value.status, caught.value.code) == (403, "key_scope")
    with pytest.raises(il.KeyScope):
        narrow.list_sent(other.address)
    with pytest.raises(il.NotFound) as missing:
        client.get_outbound("ob_doesnotexist")
    assert missing.value.code == "outbound_not_found"
    with pytest.raises(il.InvalidRequest) as invalid:
        client.list_outbound(status="lost")
    assert invalid.value.code == "invalid_request" and invalid.value.message.startswith("status: ")
    with pytest.raises(il.Unauthorized) as denied:
        il.Inboxlayer(api_server, "il_not-a-real-token").account()
    assert str(denied.value) == "Invalid or revoked API token (HTTP 401 unauthorized)"
    with pytest.raises(il.TransportError, match="refusing to send the API token over plain http to api.example.com"):
        il.Inboxlayer("http://api.example.com", scoped)
    with pytest.raises(il.TransportError, match=r"^cannot reach the API at http://127.0.0.1:9: "):
        il.Inboxlayer("http://127.0.0.1:9", scoped).account()


class _FlakyGateway:
    """A load balancer in front of the real API that loses the first answer to a send: it forwards
    the request (the server stores the message) and tells the client 503 instead. The only stand-in
    here is for that intermediary, which is outside our code; the API behind it is the real one."""

    def __init__(self, upstream):
        import http.server
        import threading
        import urllib.request as urlrequest

        gateway = self
        self.forwarded_sends, self.lost = 0, False

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                request = urlrequest.Request(upstream + self.path, data=body, method=self.command)
                for name in ("Authorization", "Content-Type", "Idempotency-Key", "Accept"):
                    if self.headers.get(name):
                        request.add_header(name, self.headers[name])
                try:
                    with urlrequest.urlopen(request, timeout=30) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                if self.command == "POST" and self.path.endswith("/send"):
                    gateway.forwarded_sends += 1
                    if not gateway.lost:
                        gateway.lost = True
                        status, payload = 503, b'{"error": {"code": "bad_gateway", "message": "upstream reset"}}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_client_retry_after_a_lost_answer_does_not_send_twice(api_server, account):
    gateway = _FlakyGateway(api_server)
    try:
        sent = il.Inboxlayer(gateway.url, account.token).send(account.address, to=["bob@example.com"],
                                                               subject="Once", text="only once")
    finally:
        gateway.server.shutdown()
    assert (gateway.lost, gateway.forwarded_sends) == (True, 2)  # the server saw the send twice
    with models.db.connection_context():
        rows = [o.public_id for o in models.OutboundEmail.select().where(models.OutboundEmail.user == account.user.id)]
    assert rows == [sent["id"]]  # ...and stored it once: the retry replayed the first
