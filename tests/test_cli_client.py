"""The client CLI as a child process against the API served over real HTTP: login, send (API and
SMTP), --wait with a real relay worker and the SES stand-in, status, outbound list, and errors
as one line with a non-zero exit code."""
import base64
import email
import email.policy
import json
import stat

import models
from core import accounts
from core import blobs
from tests.fixtures_api import send_body
from tests.helpers import make_account


def login(run_cli, api_server, token):
    result = run_cli("login", "--api-url", api_server, "--token", token)
    assert result.returncode == 0, result.stderr
    return result


def one_error_line(result):
    """The CLI failed with exactly one line on stderr and no traceback; return that line."""
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_login_stores_credentials_owner_only(run_cli, api_server, account, cli_home):
    result = login(run_cli, api_server, account.token)
    path = cli_home / "credentials.json"
    assert result.stdout.startswith(f"logged in to {api_server} as {account.email}; saved to ")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"api_url": api_server, "token": account.token}


def test_cli_login_prompts_for_token_without_echo(run_cli, api_server, account, cli_home):
    result = run_cli("login", "--api-url", api_server, input=account.token + "\n")
    assert result.returncode == 0, result.stderr
    assert account.token not in result.stdout + result.stderr
    assert json.loads((cli_home / "credentials.json").read_text())["token"] == account.token


def test_cli_login_with_bad_token_fails_and_saves_nothing(run_cli, api_server, account, cli_home):
    line = one_error_line(run_cli("login", "--api-url", api_server, "--token", "il_not-a-real-token"))
    assert line == ("error: Invalid or revoked API token; check the token or run `inboxlayer login` "
                    "(HTTP 401 unauthorized)")
    assert not (cli_home / "credentials.json").exists()


def test_cli_send_prints_the_outbound_id(run_cli, api_server, account):
    login(run_cli, api_server, account.token)
    result = run_cli("send", "--from", account.address, "--to", "bob@example.com", "--cc", "carol@example.com",
                     "--bcc", "dave@example.com", "--subject", "From the CLI", "--text", "Hello from the CLI",
                     "-H", "X-Run: 7")
    assert result.returncode == 0, result.stderr
    outbound_id = result.stdout.strip()
    with models.db.connection_context():
        row = models.OutboundEmail.get(models.OutboundEmail.public_id == outbound_id)
        raw = blobs.store().read_bytes(row.message.blob_key)
    assert row.via == "api"
    assert json.loads(row.recipients) == ["bob@example.com", "carol@example.com", "dave@example.com"]
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "From the CLI"
    assert parsed["X-Run"] == "7"


def test_cli_environment_overrides_stored_credentials(run_cli, api_server, account):
    with models.db.connection_context():
        other = make_account(email="other@example.com", local_part="other")
    login(run_cli, api_server, other.token)  # stored: the other account
    env = {"INBOXLAYER_TOKEN": account.token}
    result = run_cli("send", "--from", account.address, "--to", "bob@example.com", "--text", "hi", env=env)
    assert result.returncode == 0, result.stderr
    # --token beats the environment.
    line = one_error_line(run_cli("send", "--from", account.address, "--to", "bob@example.com", "--text", "hi",
                                  "--token", other.token, env=env))
    assert line == f"error: No inbox '{account.address}' in this account (HTTP 404 inbox_not_found)"
    # INBOXLAYER_API_URL beats the stored URL.
    unreachable = run_cli("outbound", "list", env={**env, "INBOXLAYER_API_URL": "http://127.0.0.1:9"})
    assert one_error_line(unreachable).startswith("error: cannot reach the API at http://127.0.0.1:9: ")


def test_cli_send_json_has_the_api_fields(run_cli, api_server, api, account):
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server}
    result = run_cli("send", "--from", account.address, "--to", "bob@example.com", "--text", "hi", "--json", env=env)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    detail = api.get(f"/v1/outbound/{printed['id']}").json()
    # the send answer (202) itself; the history and the recipients refused at RCPT are detail-only
    assert printed == {k: v for k, v in detail.items() if k not in ("events", "refused_recipients")}
    assert printed["status"] == "queued"


def test_cli_send_large_attachment_streams_with_progress(run_cli, api_server, account, tmp_path):
    payload = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MB, not a multiple of the base64 chunk
    attachment = tmp_path / "data.bin"
    attachment.write_bytes(payload)
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server}
    result = run_cli("send", "--from", account.address, "--to", "bob@example.com", "--text", "see attached",
                     "--attach", attachment, env=env)
    assert result.returncode == 0, result.stderr
    assert "uploading" in result.stderr
    with models.db.connection_context():
        row = models.OutboundEmail.get(models.OutboundEmail.public_id == result.stdout.strip())
        raw = blobs.store().read_bytes(row.message.blob_key)
    (part,) = email.message_from_bytes(raw, policy=email.policy.default).iter_attachments()
    assert part.get_filename() == "data.bin"
    assert part.get_content() == payload


def test_cli_errors_are_one_line_with_nonzero_exit(run_cli, api_server, account, config):
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server}
    send = ("send", "--to", "bob@example.com", "--text", "hi")
    assert one_error_line(run_cli(*send, "--from", "nobody@inboxlayer.dev", env=env)) == \
        "error: No inbox 'nobody@inboxlayer.dev' in this account (HTTP 404 inbox_not_found)"
    assert one_error_line(run_cli(*send, "--from", account.address, env={**env, "INBOXLAYER_TOKEN": "il_bad"})) == \
        "error: Invalid or revoked API token; check the token or run `inboxlayer login` (HTTP 401 unauthorized)"
    assert one_error_line(run_cli(*send, "--from", account.address, env={"INBOXLAYER_API_URL": api_server})) == \
        "error: not logged in: run `inboxlayer login` or set INBOXLAYER_TOKEN"
    assert one_error_line(run_cli("send", "--from", account.address, "--to", "not an address", "--text", "x",
                                  env=env)).startswith("error: to[0]: 'not an address' is not a valid address")
    assert one_error_line(run_cli("status", "ob_0000", env=env)) == \
        "error: No outbound email 'ob_0000' in this account (HTTP 404 outbound_not_found)"
    with models.db.connection_context(), models.db.atomic():
        assert models.reserve_send(account.user, 500, 500)
    assert one_error_line(run_cli(*send, "--from", account.address, env=env)) == \
        "error: Daily sending quota exceeded (500/500, resets 00:00 UTC) (HTTP 429 quota_exceeded)"


def test_cli_status_and_outbound_list_show_the_api_data(run_cli, api_server, api, account):
    first = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(subject="First")).json()
    second = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(subject="Second")).json()
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server}
    status = run_cli("status", first["id"], env=env)
    assert status.returncode == 0, status.stderr
    assert first["id"] in status.stdout and "queued" in status.stdout and "First" in status.stdout
    status_json = run_cli("status", first["id"], "--json", env=env)
    assert json.loads(status_json.stdout) == api.get(f"/v1/outbound/{first['id']}").json()
    table = run_cli("outbound", "list", env=env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.index(second["id"]) < table.stdout.index(first["id"])  # newest first
    page = run_cli("outbound", "list", "--limit", "1", "--status", "queued", "--inbox", account.address, "--json",
                   env=env)
    listed = json.loads(page.stdout)
    assert listed == api.get("/v1/outbound", params={"limit": 1, "status": "queued",
                                                     "inbox": account.address}).json()
    assert [row["id"] for row in listed["data"]] == [second["id"]]
    assert listed["has_more"] is True


def test_cli_send_wait_ends_when_ses_accepted_it(run_cli, api_server, account, start_worker, ses_sent):
    start_worker()
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server}
    result = run_cli("send", "--from", account.address, "--to", "bob@example.com", "--subject", "Waited for",
                     "--text", "hi", "--wait", "--timeout", "60", "--json", env=env)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["status"] == "sent"
    assert row["ses_message_id"]
    (sent,) = [m for m in ses_sent() if m["id"] == row["ses_message_id"]]
    assert set(sent["destinations"]) == {"bob@example.com"}  # moto lists header recipients again
    assert "Subject: Waited for" in sent["raw_data"]


def test_cli_send_via_smtp_waits_for_the_real_status(run_cli, api_server, account, smtp_server, start_worker,
                                                     ses_sent, tmp_path):
    start_worker()
    attachment = tmp_path / "note.txt"
    attachment.write_text("attached over SMTP\n")
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server}
    result = run_cli("send", "--via", "smtp", "--smtp-host", smtp_server.host, "--smtp-port", smtp_server.starttls_port,
                     "--smtp-cafile", smtp_server.cafile, "--from", account.address, "--to", "bob@example.com",
                     "--bcc", "hidden@example.com", "--subject", "Over SMTP", "--text", "hello", "--attach",
                     attachment, "--wait", "--timeout", "60", "--json", env=env)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["via"] == "smtp"
    assert row["status"] == "sent"
    assert row["recipients"] == ["bob@example.com", "hidden@example.com"]
    (sent,) = [m for m in ses_sent() if m["id"] == row["ses_message_id"]]
    assert set(sent["destinations"]) == {"bob@example.com", "hidden@example.com"}
    assert "Subject: Over SMTP" in sent["raw_data"]
    assert "hidden@example.com" not in sent["raw_data"]  # Bcc stripped by the relay
    assert 'filename="note.txt"' in sent["raw_data"]


def test_cli_send_via_smtp_with_bad_token_is_one_line(run_cli, api_server, account, smtp_server):
    env = {"INBOXLAYER_TOKEN": "il_wrong-token", "INBOXLAYER_API_URL": api_server}
    result = run_cli("send", "--via", "smtp", "--smtp-host", smtp_server.host, "--smtp-port", smtp_server.starttls_port,
                     "--smtp-cafile", smtp_server.cafile, "--from", account.address, "--to", "bob@example.com",
                     "--text", "hello", env=env)
    assert one_error_line(result) == "error: SMTP login refused: 535 5.7.8 Authentication credentials invalid"


def test_cli_send_wait_exits_4_when_the_relay_fails(run_cli, api_server, account, start_worker):
    # Verified in our database but not at SES: the stand-in rejects the sender, a permanent failure.
    with models.db.connection_context(), models.db.atomic():
        domain = models.Domain.create(user=account.user, name="unverified-at-ses.example", verification_token="t",
                                      status="verified")
        accounts.create_inbox(account.user, "bot", domain)
    start_worker()
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server}
    result = run_cli("send", "--from", "bot@unverified-at-ses.example", "--to", "bob@example.com", "--text", "hi",
                     "--wait", "--timeout", "60", env=env)
    assert result.returncode == 4, result.stderr
    outbound_id = result.stdout.strip()
    assert outbound_id.startswith("ob_")
    assert f"error: {outbound_id} failed: " in result.stderr
    watched = run_cli("status", outbound_id, "--watch", "--timeout", "30", "--json", env=env)
    assert watched.returncode == 4
    assert json.loads(watched.stdout)["status"] == "failed"


def test_cli_status_watch_times_out_with_exit_3(run_cli, api_server, api, account):
    sent = api.post(f"/v1/inboxes/{account.address}/send", json=send_body()).json()  # no worker: stays queued
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server}
    result = run_cli("status", sent["id"], "--watch", "--timeout", "1", env=env)
    assert result.returncode == 3
    assert f"error: {sent['id']} is still queued after 1s" in result.stderr


def test_cli_logout_forgets_the_token(run_cli, api_server, account, cli_home):
    login(run_cli, api_server, account.token)
    assert run_cli("logout").returncode == 0
    assert not (cli_home / "credentials.json").exists()
    assert one_error_line(run_cli("outbound", "list")) == \
        "error: not logged in: run `inboxlayer login` or set INBOXLAYER_TOKEN"


def test_cli_send_needs_a_body_and_a_recipient(run_cli, account):
    env = {"INBOXLAYER_TOKEN": account.token}
    assert one_error_line(run_cli("send", "--from", account.address, "--text", "x", env=env)) == \
        "error: give at least one recipient: --to, --cc or --bcc"
    assert one_error_line(run_cli("send", "--from", account.address, "--to", "b@example.com", env=env)) == \
        "error: give a body: --text, --text-file or --html-file"


def test_cli_send_base64_body_is_exact(tmp_path):
    # The streamed JSON body decodes to the same bytes the API would get from a one-shot encode.
    from cli.send import _write_json_body

    payload = b"\x00\xff" * 200_000 + b"tail"
    path = tmp_path / "x.bin"
    path.write_bytes(payload)
    out = tmp_path / "body.json"
    with open(out, "wb") as f:
        _write_json_body(f, {"to": ["a@example.com"], "text": "t"}, [path])
    body = json.loads(out.read_bytes())
    assert base64.b64decode(body["attachments"][0]["content"], validate=True) == payload
    assert body["attachments"][0]["filename"] == "x.bin"


def test_cli_send_via_smtp_prints_the_id_even_without_the_api(run_cli, account, smtp_server):
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": "http://127.0.0.1:9"}
    smtp = ("--via", "smtp", "--smtp-host", smtp_server.host, "--smtp-port", smtp_server.starttls_port,
            "--smtp-cafile", smtp_server.cafile, "--from", account.address, "--to", "bob@example.com", "--text", "x")
    result = run_cli("send", *smtp, env=env)
    assert result.returncode == 0, result.stderr
    outbound_id = result.stdout.strip()
    with models.db.connection_context():
        assert models.OutboundEmail.get(models.OutboundEmail.public_id == outbound_id).via == "smtp"
    # --json needs the API for the row: the id still comes first, then one error line.
    with_json = run_cli("send", *smtp, "--json", env=env)
    assert with_json.stdout.startswith("ob_")
    assert one_error_line(with_json).startswith(
        f"error: {with_json.stdout.strip()} was queued over SMTP, but its status is unavailable: cannot reach")


def test_cli_send_reads_bodies_from_stdin_and_files(run_cli, api_server, account, tmp_path):
    html = tmp_path / "body.html"
    html.write_text("<p>Grüße aus der Datei</p>", encoding="utf-8")
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server}
    result = run_cli("send", "--from", account.address, "--to", "bob@example.com", "--text-file", "-",
                     "--html-file", html, env=env, input="piped text\n")
    assert result.returncode == 0, result.stderr
    with models.db.connection_context():
        row = models.OutboundEmail.get(models.OutboundEmail.public_id == result.stdout.strip())
        parsed = email.message_from_bytes(blobs.store().read_bytes(row.message.blob_key), policy=email.policy.default)
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == "piped text\n"
    assert parsed.get_body(("html",)).get_content().replace("\r\n", "\n") == "<p>Grüße aus der Datei</p>\n"


def test_cli_refuses_plain_http_to_a_remote_host(run_cli, account):
    for url in ("http://api.example.com", "http://203.0.113.5:8000/"):
        result = run_cli("outbound", "list", env={"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": url})
        host = url.split("//")[1].split(":")[0].rstrip("/")
        assert one_error_line(result).startswith(f"error: refusing to send the API token over plain http to {host}: ")
        assert result.returncode == 2
    malformed = run_cli("outbound", "list", env={"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": "http://[::1"})
    assert one_error_line(malformed) == "error: API URL 'http://[::1' must be http(s)://host[:port]"
    # Loopback in any spelling is this machine: allowed (and here unreachable, so the error is about that).
    for url in ("http://localhost:9", "http://127.0.0.2:9", "http://[::1]:9"):
        line = one_error_line(run_cli("outbound", "list", env={"INBOXLAYER_TOKEN": account.token,
                                                               "INBOXLAYER_API_URL": url}))
        assert line.startswith(f"error: cannot reach the API at {url}: ")


def test_cli_does_not_follow_redirects_with_the_token(run_cli, account):
    import http.server
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.server.server_port, self.path, self.headers.get("Authorization")))
            if self.server is first:
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{second.server_port}/elsewhere")
                self.end_headers()
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"data": [], "has_more": false, "next_cursor": null}')

        def log_message(self, *args):
            pass

    first = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    second = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (first, second)]
    for thread in threads:
        thread.start()
    try:
        result = run_cli("outbound", "list", env={"INBOXLAYER_TOKEN": account.token,
                                                  "INBOXLAYER_API_URL": f"http://127.0.0.1:{first.server_port}"})
    finally:
        for server in (first, second):
            server.shutdown()
            server.server_close()
    assert one_error_line(result) == (
        f"error: the API at http://127.0.0.1:{first.server_port} redirected GET /v1/outbound?limit=20 to "
        f"http://127.0.0.1:{second.server_port}/elsewhere (HTTP 302); not following it with the token: "
        "if that is the API, use its address as --api-url")
    assert seen == [(first.server_port, "/v1/outbound?limit=20", f"Bearer {account.token}")]  # never the second


def test_cli_outbound_list_never_cuts_ids_at_80_columns(run_cli, api_server, api, account):
    sent = [api.post(f"/v1/inboxes/{account.address}/send",
                     json=send_body(to=["a-rather-long-recipient-address@example.com"],
                                    subject="A subject long enough to need wrapping in a narrow terminal")).json()
            for _ in range(2)]
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server, "COLUMNS": "80"}
    table = run_cli("outbound", "list", env=env)
    assert table.returncode == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    for row in sent:
        assert row["id"] in table.stdout  # whole, on one line: can be pasted into `inboxlayer status`
    status = run_cli("status", sent[0]["id"], env=env)
    assert status.returncode == 0, status.stderr
    assert sent[0]["id"] in status.stdout


def test_api_smtp_settings_publish_host_ports_and_dev_certificate(api, config, reconfigure):
    from core import devcert

    response = api.get("/v1/smtp")
    assert response.status_code == 200
    body = response.json()
    cert_path, _ = devcert.certificate_paths(config)
    assert body == {"host": config["smtp"]["public_host"], "starttls_port": config["smtp"]["starttls_port"],
                    "tls_port": config["smtp"]["tls_port"], "auth_mechanisms": ["PLAIN", "LOGIN"],
                    "username": "The inbox address", "max_message_size": 26214400, "max_recipients": 100,
                    "certificate": open(cert_path).read()}
    assert body["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    # With a CA-issued certificate configured there is nothing extra to trust.
    config["smtp"]["cert_file"], config["smtp"]["key_file"] = devcert.certificate_paths(config)
    config["smtp"]["tls_port"] = 0
    reconfigure()
    body = api.get("/v1/smtp").json()
    assert body["certificate"] is None
    assert body["tls_port"] is None
    assert api.__class__(api.base_url).get("/v1/smtp").status_code == 401  # a token is needed


def test_cli_send_via_smtp_configures_itself_from_the_server(run_cli, api_server, account, smtp_server, config,
                                                             reconfigure):
    # The server publishes this test server's host, ports and self-signed certificate; the CLI gets
    # nothing but the API URL and the token.
    config["smtp"]["public_host"] = smtp_server.host
    config["smtp"]["starttls_port"], config["smtp"]["tls_port"] = smtp_server.starttls_port, smtp_server.tls_port
    reconfigure()
    env = {"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": api_server}
    result = run_cli("send", "--via", "smtp", "--from", account.address, "--to", "bob@example.com", "--text", "x",
                     env=env)
    assert result.returncode == 0, result.stderr
    with models.db.connection_context():
        assert models.OutboundEmail.get(models.OutboundEmail.public_id == result.stdout.strip()).via == "smtp"
    # The published TLS port means implicit TLS.
    implicit = run_cli("send", "--via", "smtp", "--smtp-port", smtp_server.tls_port, "--from", account.address,
                       "--to", "bob@example.com", "--text", "x", env=env)
    assert implicit.returncode == 0, implicit.stderr
    assert implicit.stdout.startswith("ob_")
