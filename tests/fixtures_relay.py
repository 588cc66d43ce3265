"""Fixtures for the relay tests (a pytest plugin registered in conftest.py).

SES is the moto server over HTTP (``ses_endpoint``); nothing here patches boto3. Faults SES
cannot be made to produce on demand (throttling, a slow call) are injected with botocore event
hooks on the real client, in the process that runs the job: in the test process through
``transport.client()``, in a worker subprocess through the RELAY_FAULT_PLAN variable, which names
``tests.fixtures_relay:fault_plan``.
"""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from botocore.awsrequest import AWSResponse

import models
from core import outbox
from smtpd_worker import transport
from core import submit as core_submit
from tests.helpers import dump_toml
from tests.helpers import wait_until

FAULT_DELAY_ENV = "RELAY_FAULT_DELAY"  # seconds the fault plan holds each SES call before sending it
FAULT_MARK_ENV = "RELAY_FAULT_MARK"  # file the fault plan touches when a call starts waiting
FAULT_THROTTLE_ENV = "RELAY_FAULT_THROTTLE"  # the first N SendEmail calls of the process get SES's 429
FAULT_SPANS_ENV = "RELAY_FAULT_SPANS"  # file the fault plan appends "start end" (monotonic s) of each held call to


def fault_plan(client):
    """RELAY_FAULT_PLAN target: hold each SendEmail for RELAY_FAULT_DELAY seconds (after the
    worker recorded its attempt, before the bytes leave), touching RELAY_FAULT_MARK first and
    appending the held span to RELAY_FAULT_SPANS after; answer the first RELAY_FAULT_THROTTLE
    calls with SES's throttling 429 instead."""
    delay = float(os.environ.get(FAULT_DELAY_ENV, "0"))
    mark = os.environ.get(FAULT_MARK_ENV)
    throttle = [int(os.environ.get(FAULT_THROTTLE_ENV, "0"))]
    spans = os.environ.get(FAULT_SPANS_ENV)
    lock = threading.Lock()

    def hold(request, **kwargs):
        with lock:
            if throttle[0] > 0:
                throttle[0] -= 1
                return throttle_response(request)
        if mark:
            with lock, open(mark, "a") as f:
                f.write(f"{os.getpid()}\n")
        start = time.monotonic()
        time.sleep(delay)
        if spans:
            with lock, open(spans, "a") as f:
                f.write(f"{start} {time.monotonic()}\n")
        return None

    client.meta.events.register("before-send.sesv2.SendEmail", hold)


def throttle_response(request):
    """What SES answers when the sending rate is exceeded (HTTP 429)."""
    body = json.dumps({"message": "Maximum sending rate exceeded."}).encode()
    return AWSResponse(request.url, 429, {"x-amzn-ErrorType": "TooManyRequestsException",
                                          "Content-Type": "application/json"}, _Raw(body))


class _Raw:
    def __init__(self, body):
        self.body = body

    def stream(self, **kwargs):
        yield self.body

    def read(self, *args):
        return self.body


@pytest.fixture
def relay_config(config, reconfigure):
    """The test's settings with quick retries and a short reconcile threshold."""
    config["relay"].update(backoff_base=1, backoff_max=2, reconcile_after=1, job_timeout=10)
    reconfigure()
    transport.reset_client()
    yield config
    transport.reset_client()


@pytest.fixture
def ses_sent(ses_endpoint):
    """A callable returning what the SES stand-in has "sent": [{id, source, destinations, raw_data}]."""

    def sent():
        data = requests.get(f"{ses_endpoint}/moto-api/data.json", timeout=10).json()
        return data["ses"]["RawMessage"]

    return sent


def make_message(address, to="rcpt@example.com", subject="Hello", bcc=None, body="Hi there.\r\n", extra=b""):
    lines = [f"From: Agent <{address}>", f"To: {to}", f"Subject: {subject}",
             f"Message-ID: <{os.urandom(6).hex()}@inboxlayer.dev>", "Date: Mon, 23 Nov 2026 10:00:00 +0000"]
    if bcc:
        lines.append(f"Bcc: {bcc}")
    return ("\r\n".join(lines) + "\r\n").encode() + extra + b"\r\n" + body.encode()


@pytest.fixture
def submit(account):
    """Accept one message through the one submit path; returns the committed OutboundEmail."""

    def submit_one(raw=None, recipients=("rcpt@example.com",)):
        raw = raw if raw is not None else make_message(account.address)
        return core_submit.submit(account.user, account.inbox, account.address, list(recipients),
                                 io.BytesIO(raw), via="api")

    return submit_one


def max_overlap(spans_path):
    """The most held SES calls that were in flight at one moment (from a RELAY_FAULT_SPANS file)."""
    points = []
    for line in spans_path.read_text().split("\n"):
        if line:
            start, end = map(float, line.split())
            points += [(start, 1), (end, -1)]
    current = peak = 0
    for _, step in sorted(points, key=lambda p: (p[0], p[1])):  # an end before a start at the same instant
        current += step
        peak = max(peak, current)
    return peak


def slow_ses(mark, delay, spans=None, throttle=0):
    """Environment for a worker subprocess whose SES calls go through the test fault plan."""
    env = {"RELAY_FAULT_PLAN": "tests.fixtures_relay:fault_plan", FAULT_DELAY_ENV: delay, FAULT_MARK_ENV: mark,
           FAULT_THROTTLE_ENV: throttle}
    if spans:
        env[FAULT_SPANS_ENV] = spans
    return env


def run_worker_burst():
    """Run an RQ worker in this process until the queue is empty (scheduled retries that are due
    are moved to the queue first)."""
    from smtpd_worker.worker import RelayWorker

    relay_queue = outbox.relay_queue()
    RelayWorker([relay_queue], connection=outbox.connection()).work(burst=True, with_scheduler=True)


def outbound(outbound_id):
    with models.db.connection_context():
        return models.OutboundEmail.get_by_id(outbound_id)


def events_of(outbound_id):
    with models.db.connection_context():
        ev = models.OutboundEvent
        return [(e.type, json.loads(e.detail)) for e in
                ev.select().where(ev.outbound == outbound_id).order_by(ev.id)]


def outcomes(outbound_ids):
    """{row id: [relay outcome events]}: a row that ended once has exactly one ("sent" or "failed")."""
    ev = models.OutboundEvent
    with models.db.connection_context():
        found = {i: [] for i in outbound_ids}
        for e in ev.select().where(ev.outbound.in_(list(outbound_ids)), ev.type.in_(("sent", "failed"))):
            found[e.outbound_id].append(e.type)
    return found


@contextlib.contextmanager
def row_locked(database_url, outbound_id):
    """Hold a write lock on one OutboundEmail row from a connection of our own (not the pool), so
    a worker's claim UPDATE waits on it: the worker has taken the job and not claimed the row.
    Postgres: SELECT ... FOR UPDATE; SQLite: BEGIN IMMEDIATE (the database's write lock)."""
    if database_url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(database_url[len("sqlite:///"):], isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
    else:
        import psycopg2

        conn = psycopg2.connect(database_url, connect_timeout=10)
        with conn.cursor() as cur:  # psycopg2 opens the transaction itself
            cur.execute("SELECT id FROM outbound_email WHERE id = %s FOR UPDATE", (outbound_id,))
            assert cur.fetchone() == (outbound_id,)
    try:
        yield
    finally:
        conn.rollback()
        conn.close()


def relay_until(outbound_id, statuses=("sent",), timeout=20):
    """Drive in-process burst workers until the row reaches one of ``statuses``."""

    def done():
        run_worker_burst()
        row = outbound(outbound_id)
        return row if row.status in statuses else None

    return wait_until(done, timeout=timeout, interval=0.2, what=f"row {outbound_id} to reach {statuses}")


class WorkerProcess:
    """`python -m cli worker` as a child process in its own session (signals reach only it)."""

    def __init__(self, env, log_path, args=()):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "worker", *args], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


@pytest.fixture
def start_worker(relay_config, subprocess_env, config_file, tmp_path):
    """Start worker subprocesses with the test's settings as they are at start time (and optional
    extra environment)."""
    started = []

    def start(*args, **extra_env):
        config_file.write_text(dump_toml(relay_config))
        env = {**subprocess_env, **{k: str(v) for k, v in extra_env.items()}}
        worker = WorkerProcess(env, tmp_path / f"worker{len(started)}.log", args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


# -- SNS: a real WSGI server for the webhook, moto's SNS, and a test signer -------------------

MOTO_SNS_DISPATCH = {  # moto's server picks the service from a SigV4 credential scope; the PEM GET is unsigned
    "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sns/aws4_request, "
                     "SignedHeaders=host, Signature=0"}


def serve_wsgi(app):
    """Serve ``app`` on a loopback port in a thread; returns (server, base_url)."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


_signing_keys = []


def _test_signing_key():
    """One RSA key per test session (generating 2048-bit keys is slow on a busy machine)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not _signing_keys:
        _signing_keys.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _signing_keys[0]


class SnsHarness:
    """Everything the SNS tests need around the real webhook.

    moto signs each notification with a certificate it says lives at
    https://sns.us-east-1.amazonaws.com/<name>.pem. That host is unreachable here, so the "edge"
    (this harness's subscription endpoint) re-points SigningCertURL at itself on loopback, serves
    moto's certificate from there, and forwards the body unchanged otherwise. The URL is not part
    of the signed string, so the webhook verifies moto's genuine signature; the edge stands in for
    DNS, not for the signature.
    """

    def __init__(self, webhook_url, ses_endpoint):
        import boto3
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import NameOID
        import datetime

        self.webhook_url, self.ses_endpoint = webhook_url, ses_endpoint
        self.received, self.forwarded, self.confirmations = [], [], []
        self.key = _test_signing_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.test")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert_pem = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                         .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                         .not_valid_before(now - datetime.timedelta(days=1))
                         .not_valid_after(now + datetime.timedelta(days=1))
                         .sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        self.server, self.url = serve_wsgi(self._edge)
        self.sns = boto3.client("sns", endpoint_url=ses_endpoint, region_name="us-east-1")
        self.topic_arn = self.sns.create_topic(Name=f"ses-events-{os.urandom(4).hex()}")["TopicArn"]
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="http", Endpoint=f"{self.url}/sns")

    def close(self):
        self.server.shutdown()

    # the edge ---------------------------------------------------------------------------------
    def _edge(self, environ, start_response):
        from urllib.parse import parse_qs

        path = environ["PATH_INFO"]
        if environ["REQUEST_METHOD"] == "POST" and path == "/sns":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            self.received.append(body)
            response = self.post(self.repoint(body))
            self.forwarded.append(response)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        if path.startswith("/moto-cert/"):
            pem = requests.get(f"{self.ses_endpoint}/{path[len('/moto-cert/'):]}", headers=MOTO_SNS_DISPATCH,
                               timeout=10)
            start_response(f"{pem.status_code} X", [("Content-Type", "application/x-pem-file")])
            return [pem.content]
        if path == "/test-cert.pem":
            start_response("200 OK", [("Content-Type", "application/x-pem-file")])
            return [self.cert_pem]
        if path == "/confirm":
            self.confirmations.append(parse_qs(environ.get("QUERY_STRING", "")))
            start_response("200 OK", [("Content-Type", "text/xml")])
            return [b"<ConfirmSubscriptionResponse/>"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    def repoint(self, body):
        envelope = json.loads(body)
        name = envelope["SigningCertURL"].rsplit("/", 1)[1]
        envelope["SigningCertURL"] = f"{self.url}/moto-cert/{name}"
        return json.dumps(envelope).encode()

    # helpers for tests ---------------------------------------------------------------------
    def post(self, body):
        return requests.post(f"{self.webhook_url}/webhooks/ses", data=body,
                             headers={"Content-Type": "text/plain; charset=UTF-8"}, timeout=30)

    def publish(self, ses_event):
        """Publish an SES event through moto's SNS; returns the webhook's response to it."""
        before = len(self.forwarded)
        self.sns.publish(TopicArn=self.topic_arn, Message=json.dumps(ses_event))
        assert len(self.forwarded) == before + 1, "moto did not deliver the notification"
        return self.forwarded[-1]

    def signed(self, message=None, version="2", type_="Notification", timestamp=None, **fields):
        """An SNS envelope signed with this harness's test certificate (served on loopback)."""
        import base64
        import datetime
        import uuid

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        from core import ses_events

        stamp = timestamp or datetime.datetime.now(datetime.timezone.utc)
        envelope = {"Type": type_, "MessageId": str(uuid.uuid4()), "TopicArn": self.topic_arn,
                    "Message": message if isinstance(message, str) else json.dumps(message),
                    "Timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
                    "SignatureVersion": version, "SigningCertURL": f"{self.url}/test-cert.pem", **fields}
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(ses_events.string_to_sign(envelope), padding.PKCS1v15(), digest)
        envelope["Signature"] = base64.b64encode(signature).decode()
        return envelope


def ses_event(kind, row, **detail):
    """An SES event-publishing record for ``row`` (which has been sent)."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    mail = {"timestamp": now, "source": row.mail_from, "messageId": row.ses_message_id,
            "destination": json.loads(row.recipients), "tags": {"outbound_id": [row.public_id]}}
    key = kind[0].lower() + kind[1:]
    return {"eventType": kind, "mail": mail, key: {"timestamp": now, **detail}}


@pytest.fixture
def sns(app, ses_endpoint, reconfigure):
    """The webhook on a real WSGI server, moto's SNS subscribed to it through the edge."""
    server, url = serve_wsgi(app)
    harness = SnsHarness(url, ses_endpoint)
    # The webhook accepts only listed topics (an empty list accepts none): list this test's topic.
    app.config["INBOXLAYER"]["ses"]["sns_topic_arns"] = [harness.topic_arn]
    reconfigure()
    yield harness
    harness.close()
    server.shutdown()
