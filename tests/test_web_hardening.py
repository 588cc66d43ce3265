"""Web and API hardening (issue 10 items 4, 7, 8 and the web lows): production start-up checks,
role addresses and the per-plan inbox cap, bounded request bodies, server-side logout, the
atomic login throttle, outbound list query keys, bidi controls in attachment filenames."""
import base64
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import tomllib
import tracemalloc
from pathlib import Path

import pytest
import requests

import models
import settings
from tests.fixtures_api import send_body
from tests.fixtures_web import csrf_token_in
from tests.helpers import free_port
from tests.helpers import make_account
from tests.helpers import wait_for_port
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TOPIC = "arn:aws:sns:us-east-1:123456789012:inboxlayer-ses-events"


# -- production start-up (item 4, and the secret key low) ---------------------------------------

@pytest.mark.parametrize("environ, expected", [
    ({}, "production"),  # real AWS SES
    ({"INBOXLAYER_SES_ENDPOINT_URL": "http://127.0.0.1:5000"}, "development"),  # the moto stand-in
    ({"INBOXLAYER_SERVER_ENVIRONMENT": "development"}, "development"),
    ({"INBOXLAYER_SERVER_ENVIRONMENT": "production", "INBOXLAYER_SES_ENDPOINT_URL": "http://x:1"}, "production"),
])
def test_settings_environment_derived_or_explicit(environ, expected):
    assert settings.load_config(environ=environ)["server"]["environment"] == expected


def test_settings_environment_unknown_value_is_an_error():
    with pytest.raises(settings.SettingsError) as info:
        settings.load_config(environ={"INBOXLAYER_SERVER_ENVIRONMENT": "prod"})
    assert str(info.value).startswith("server.environment = 'prod': expected production or development")


@pytest.mark.parametrize("secret, topics, problems", [
    ("", [], ["web.secret_key", "ses.sns_topic_arns"]),
    ("s3cret", [], ["ses.sns_topic_arns"]),
    ("", [TOPIC], ["web.secret_key"]),
    ("s3cret", [TOPIC], []),
])
def test_web_production_problems_name_each_missing_setting(secret, topics, problems):
    cfg = settings.load_config(environ={"INBOXLAYER_WEB_SECRET_KEY": secret,
                                        "INBOXLAYER_SES_SNS_TOPIC_ARNS": ",".join(topics)})
    assert [p.split(" ", 1)[0] for p in settings.web_production_problems(cfg)] == problems


def test_create_app_in_production_without_secret_key_refuses(config):
    from webapp import create_app

    production = {**config, "server": {**config["server"], "environment": "production"},
                  "web": {**config["web"], "secret_key": ""},
                  "ses": {**config["ses"], "sns_topic_arns": [TOPIC]}}
    with pytest.raises(settings.SettingsError) as info:
        create_app(production)
    assert str(info.value).startswith("web.secret_key is empty: set INBOXLAYER_WEB_SECRET_KEY")


def _web_env(tmp_path, **extra):
    """`inboxlayer web` as a platform runs it against real AWS (no SES endpoint = production)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLAYER_")}
    env.update({"PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}", "PYTHONUNBUFFERED": "1",
                "INBOXLAYER_SERVER_DATA_DIR": str(tmp_path / "var"), "PORT": str(free_port())})
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


def test_web_in_production_without_secret_key_exits_with_one_line(tmp_path):
    env = _web_env(tmp_path, INBOXLAYER_SES_SNS_TOPIC_ARNS=TOPIC)
    result = subprocess.run(["inboxlayer", "web", "--workers", "1"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 4  # gunicorn's "App failed to load": it stops instead of respawning
    errors = [line for line in result.stderr.splitlines() if line.startswith("configuration error:")]
    assert errors == ["configuration error: web.secret_key is empty: set INBOXLAYER_WEB_SECRET_KEY (e.g. "
                      "`openssl rand -hex 32`); without it each web worker signs sessions with its own key "
                      "and logins break"]


def test_web_in_production_with_secret_and_topics_starts(tmp_path):
    env = _web_env(tmp_path, INBOXLAYER_WEB_SECRET_KEY="a-real-secret", INBOXLAYER_SES_SNS_TOPIC_ARNS=TOPIC)
    log = open(tmp_path / "web.log", "wb")
    proc = subprocess.Popen(["inboxlayer", "web", "--workers", "1"], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(int(env["PORT"]), timeout=30, proc=proc)
        assert requests.get(f"http://127.0.0.1:{env['PORT']}/healthz", timeout=10).status_code == 200
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


# -- role addresses and the inbox cap (item 7) ----------------------------------------------

ROLE_NAMES = ["postmaster", "abuse", "admin", "Administrator", "hostmaster", "webmaster", "security", "noc",
              "info", "support", "sales", "marketing", "www", "ftp", "noreply", "no-reply", "billing",
              "mailer-daemon", "root", "POSTMASTER+tag"]


@pytest.mark.parametrize("name", ROLE_NAMES)
def test_api_create_inbox_role_address_refused(api, config, name):
    response = api.post("/v1/inboxes", json={"name": name})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "reserved_address"
    assert error["message"] == (f"name: {name.lower()}@{config['server']['default_domain']} is a reserved role address "
                                "(postmaster, abuse, admin, support and the like belong to the operator of the "
                                "shared domain); choose another name")
    with models.db.connection_context():
        assert [i.local_part for i in models.Inbox.select()] == ["agent"]  # the account fixture's only


@pytest.mark.parametrize("name", ["postmasters", "abuse-desk", "support-bot", "admin2", "info.bot"])
def test_api_create_inbox_names_near_role_names_allowed(api, name):
    assert api.post("/v1/inboxes", json={"name": name}).status_code == 201


def test_api_create_inbox_role_name_on_own_domain_allowed(api, account):
    with models.db.connection_context(), models.db.atomic():
        models.Domain.create(user=account.user, name="agents.example.org", verification_token="t",
                             status="verified")

    response = api.post("/v1/inboxes", json={"name": "support", "domain": "agents.example.org"})

    assert response.status_code == 201
    assert response.json()["address"] == "support@agents.example.org"


def test_dashboard_create_inbox_role_address_refused(web, config):
    response = web.post("/inboxes/", {"local_part": "postmaster", "domain": "0", "display_name": ""})

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert f"Postmaster@{config['server']['default_domain']} is a reserved role address" in page
    with models.db.connection_context():
        assert models.Inbox.select().count() == 0


def test_cli_inboxes_create_role_address_refused_unless_allow_reserved(subprocess_env, config):
    make_account(email="ops@example.com", local_part="ops")
    domain = config["server"]["default_domain"]
    cli = [sys.executable, "-m", "cli", "inboxes", "create", f"abuse@{domain}", "--owner", "ops@example.com"]

    refused = subprocess.run(cli, env=subprocess_env, capture_output=True, text=True, timeout=120)
    allowed = subprocess.run(cli + ["--allow-reserved"], env=subprocess_env, capture_output=True, text=True,
                             timeout=120)

    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: abuse@{domain} is a reserved role address (postmaster, abuse, admin, support and the like "
        "belong to the operator of the shared domain); choose another name (an operator may take it with "
        "--allow-reserved)")
    assert allowed.returncode == 0, allowed.stderr
    with models.db.connection_context():
        assert models.Inbox.select().where(models.Inbox.address == f"abuse@{domain}").count() == 1


def test_api_create_inbox_over_plan_cap_is_403(api, account, config, reconfigure):
    config["plans"]["free"]["max_inboxes"] = 3  # the account fixture already has one inbox
    reconfigure()

    created = [api.post("/v1/inboxes", json={"name": f"bot{n}"}).status_code for n in range(3)]

    assert created == [201, 201, 403]
    refused = api.post("/v1/inboxes", json={"name": "bot9"})
    assert refused.json() == {"error": {"code": "inbox_limit_reached", "message": (
        "This account has reached its plan's limit of 3 inboxes; delete one or upgrade the plan")}}
    with models.db.connection_context():
        assert models.Inbox.select().where(models.Inbox.user == account.user).count() == 3


def test_dashboard_create_inbox_over_plan_cap_is_refused(web, config, reconfigure):
    config["plans"]["free"]["max_inboxes"] = 1
    reconfigure()
    web.create_inbox("first")

    response = web.post("/inboxes/", {"local_part": "second", "domain": "0", "display_name": ""})

    assert response.status_code == 403
    assert "This account has reached its plan&#39;s limit of 1 inboxes" in response.get_data(as_text=True)


def test_inbox_cap_holds_under_parallel_creates_over_http(live_server, account, config, reconfigure):
    config["plans"]["free"]["max_inboxes"] = 4  # one exists; three more may be made
    reconfigure()
    barrier = threading.Barrier(12)
    statuses = []

    def create(n):
        barrier.wait()
        response = requests.post(f"{live_server.url}/v1/inboxes", json={"name": f"racer{n}"},
                                 headers={"Authorization": f"Bearer {account.token}"}, timeout=60)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)

    assert sorted(statuses) == [201] * 3 + [403] * 9
    with models.db.connection_context():
        assert models.Inbox.select().where(models.Inbox.user == account.user).count() == 4


# -- bounded bodies (item 8) ------------------------------------------------------------------

def _chunked_post_until_answer(port, path, total, chunk=64 * 1024, headers=""):
    """POST a chunked body of up to ``total`` bytes over a raw socket, watching for an early
    answer after every chunk. Returns (status line, bytes of body sent before it arrived)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n{headers}"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    piece = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    sent, answer = 0, b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and b"\r\n" not in answer:
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 1.0)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            elif writable:
                sock.sendall(piece)
                sent += chunk
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return answer.split(b"\r\n", 1)[0].decode(), sent


def _worker_peak_rss_kib(master_pid):
    """VmHWM (peak resident set) of the gunicorn worker under ``master_pid``."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    assert len(children) == 1, children
    status = Path(f"/proc/{children[0]}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def test_webhook_chunked_body_over_limit_is_413_before_it_is_read(cluster):
    web = cluster.web()
    wait_until(lambda: requests.get(f"{web.url}/healthz", timeout=5).status_code == 200, what="web up")
    peak_before = _worker_peak_rss_kib(web.proc.pid)

    status, sent = _chunked_post_until_answer(web.port, "/webhooks/ses", total=60 * 2**20)

    assert status == "HTTP/1.1 413 REQUEST ENTITY TOO LARGE"
    # The answer came after the 1 MB limit was read, long before the 60 MB body (or the app's
    # former 50 MB limit) was sent; socket buffers account for the rest.
    assert 2**20 <= sent < 12 * 2**20
    assert _worker_peak_rss_kib(web.proc.pid) - peak_before < 20 * 1024  # KiB: nothing near 50 MB buffered


def test_webhook_content_length_over_limit_is_413_without_reading(live_server):
    sock = socket.create_connection(("127.0.0.1", live_server.port), timeout=30)
    try:
        sock.sendall(b"POST /webhooks/ses HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 2000000\r\n\r\n{")  # the body never comes
        answer = sock.recv(4096)
    finally:
        sock.close()
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 413 REQUEST ENTITY TOO LARGE"


def test_api_body_over_1_mib_refused_outside_send(api):
    response = api.post("/v1/inboxes", data=b'{"name": "' + b"x" * 2**20 + b'"}',
                        headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert response.json() == {"error": {"code": "payload_too_large", "message": "Request body over 1048576 bytes"}}


def test_send_content_length_over_limit_is_413_without_reading(live_server, account, config):
    limit = config["smtp"]["max_message_size"] * 2
    sock = socket.create_connection(("127.0.0.1", live_server.port), timeout=30)
    try:
        sock.sendall(f"POST /v1/inboxes/{account.address}/send HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {account.token}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {limit + 1}\r\n\r\n{{".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 413 REQUEST ENTITY TOO LARGE"
    assert json.loads(body) == {"error": {"code": "payload_too_large", "message": (
        f"Request body over {limit} bytes; a message may be at most 25 MB as sent, i.e. after base64 encoding "
        "of attachments")}}


def test_send_over_limit_is_413_before_decoding_or_building(api, account, config):
    limit = config["smtp"]["max_message_size"]
    raw = b"\0" * (20 * 2**20)  # 20 MB: under 25 MB as a file, 27.4 MB as base64 lines
    at_least = len(raw) // 57 * 78 + 34 + len(send_body()["text"])  # 57 bytes a line; the last 23 bytes: 32 + CRLF
    body = json.dumps(send_body(attachments=[{"filename": "big.bin",
                                              "content": base64.b64encode(raw).decode()}])).encode()
    del raw

    tracemalloc.start()
    try:
        response = api.post(f"/v1/inboxes/{account.address}/send", data=body,
                            headers={"Content-Type": "application/json"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 413
    assert response.json()["error"] == {"code": "message_too_large", "message": (
        f"Message size at least {at_least} bytes exceeds the limit of {limit} bytes (25 MB). The limit applies to "
        "the message as sent, i.e. after base64 encoding of attachments (4/3 of their size plus line breaks), "
        "so attachments can total about 18.3 MB")}
    # The JSON (28 MB) is read and parsed; its 20 MB of attachment are never decoded and no 28 MB
    # message is built (before: the body cached + parsed + decoded + built, over 100 MB).
    print(f"traced peak during the refused send: {peak / 2**20:.1f} MiB")
    assert peak < 2.5 * len(body)  # the JSON twice (text, then parsed) and little else
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 0


def test_send_attachment_just_under_the_real_ceiling_is_accepted(api, account, config):
    limit = config["smtp"]["max_message_size"]
    size = limit * 57 // 78 - 4096  # the 18.3 MB ceiling, less room for the headers and text part
    content = base64.b64encode(b"\0" * size).decode()

    response = api.post(f"/v1/inboxes/{account.address}/send",
                        json=send_body(attachments=[{"filename": "big.bin", "content": content}]))

    assert response.status_code == 202, response.text


# -- lows -------------------------------------------------------------------------------------

def test_logout_invalidates_a_copied_session_cookie(web, app):
    stolen = web.client.get_cookie("session").value
    thief = app.test_client()
    thief.set_cookie("session", stolen)
    assert thief.get("/dashboard").status_code == 200  # the copy works while the owner is logged in

    web.post("/logout", {}, page="/dashboard")

    response = thief.get("/dashboard")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_logout_then_login_again_works(web):
    web.post("/logout", {}, page="/dashboard")
    web.login(web.email, web.password)
    assert web.get("/dashboard").status_code == 200


def test_password_change_ends_copied_cookie_but_keeps_this_session(web, app):
    stolen = web.client.get_cookie("session").value
    new_password = "another long enough password"
    response = web.post("/account", {"current": web.password, "password": new_password, "confirm": new_password},
                        page="/account")
    assert response.status_code == 302
    thief = app.test_client()
    thief.set_cookie("session", stolen)

    assert thief.get("/dashboard").status_code == 302
    assert web.get("/dashboard").status_code == 200


def test_login_throttle_holds_under_a_parallel_burst_over_http(live_server, config):
    from werkzeug.security import generate_password_hash

    with models.db.connection_context(), models.db.atomic():
        models.User.create(email="target@example.com", password_hash=generate_password_hash("the right one"),
                           plan="free")
    max_failures = config["web"]["login_max_failures"]
    burst = 25
    sessions = []
    for _ in range(burst):  # each client has its own session and CSRF token, fetched beforehand
        s = requests.Session()
        sessions.append((s, csrf_token_in(s.get(f"{live_server.url}/login", timeout=30).text)))
    barrier = threading.Barrier(burst)
    statuses = []

    def attempt(s, token):
        barrier.wait()
        response = s.post(f"{live_server.url}/login", data={"email": "target@example.com", "password": "guess",
                                                            "csrf_token": token}, allow_redirects=False, timeout=120)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=pair) for pair in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)

    assert sorted(statuses) == [401] * max_failures + [429] * (burst - max_failures)


def test_login_success_does_not_count_toward_the_throttle(web_factory, config):
    user = web_factory()
    user.signup("regular@example.com", "the right password")
    for _ in range(config["web"]["login_max_failures"] + 2):
        user.post("/logout", {}, page="/dashboard")
        user.login("regular@example.com", "the right password")


@pytest.mark.parametrize("query", ["_method=DELETE", "_external=1", "_anchor=x", "_scheme=javascript"])
def test_outbound_list_with_url_for_keywords_in_query_is_not_500(web, query):
    response = web.get(f"/outbound/?page=2&status=sent&{query}")

    assert response.status_code == 200
    assert query.split("=")[0] not in response.get_data(as_text=True)


@pytest.mark.parametrize("char", ["\u202e", "\u200f", "\u2066", "\u061c"])
def test_send_attachment_filename_with_bidi_control_refused(api, account, char):
    attachment = {"filename": f"invoice{char}fdp.exe", "content": base64.b64encode(b"MZ").decode()}

    response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(attachments=[attachment]))

    assert response.status_code == 422
    assert response.json()["error"] == {"code": "invalid_request", "message": (
        f"attachments[0].filename: must not contain bidirectional control characters (U+{ord(char):04X}), "
        "which can disguise a file's real type")}


def test_requests_is_a_declared_dependency():
    with open(ROOT / "pyproject.toml", "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    assert any(re.match(r"requests\b", d) for d in dependencies)


@pytest.mark.parametrize("sizes, text", [
    ([], "hi"), ([0], ""), ([1, 56, 57, 58], "plain"), ([100_000], "grüße " * 1000), ([57 * 1000 + 5, 3], "\U0001f600" * 500),
])
def test_send_size_lower_bound_never_exceeds_the_built_message(sizes, text):
    import io
    from email.headerregistry import Address

    from core.mail import build_message
    from core.mail import send_request
    from core.mail import write_message
    from webapp.api.sending import size_lower_bound

    body = {"to": "rcpt@example.com", "text": text or None, "html": "<p>x</p>",
            "attachments": [{"filename": f"f{n}.bin", "content": base64.b64encode(os.urandom(n)).decode()}
                            for n in sizes]}
    message = build_message(Address(username="agent", domain="inboxlayer.dev"), send_request(body, 100),
                            "inboxlayer.dev")
    built = write_message(message, io.BytesIO())

    assert size_lower_bound(body) <= built
