"""Fixtures for the relay tests (a pytest plugin registered in conftest.py).

SES is the moto server over HTTP (``ses_endpoint``); nothing here patches boto3. Faults SES
cannot be made to produce on demand (throttling, a slow call) are injected with botocore event
hooks on the real client, in the process that runs the job: in the test process through
``relay.client()``, in a worker subprocess through the RELAY_FAULT_PLAN variable, which names
``tests.fixtures_relay:fault_plan``.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from botocore.awsrequest import AWSResponse

import models
from smtpd_worker import queue
from smtpd_worker import relay
from smtpd_worker import submission
from tests.helpers import dump_toml
from tests.helpers import wait_until

FAULT_DELAY_ENV = "RELAY_FAULT_DELAY"  # seconds the fault plan holds each SES call before sending it
FAULT_MARK_ENV = "RELAY_FAULT_MARK"  # file the fault plan touches when a call starts waiting


def fault_plan(client):
    """RELAY_FAULT_PLAN target: hold each SendEmail for RELAY_FAULT_DELAY seconds (after the
    worker recorded its attempt, before the bytes leave), touching RELAY_FAULT_MARK first."""
    delay = float(os.environ.get(FAULT_DELAY_ENV, "0"))
    mark = os.environ.get(FAULT_MARK_ENV)

    def hold(**kwargs):
        if mark:
            with open(mark, "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(delay)

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
def relay_config(config):
    """The test's settings with quick retries and a short reconcile threshold."""
    config["relay"].update(backoff_base=1, backoff_max=2, reconcile_after=1, job_timeout=10)
    relay.reset_client()
    yield config
    relay.reset_client()


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
        return submission.submit(account.user, account.inbox, account.address, list(recipients),
                                 io.BytesIO(raw), via="api")

    return submit_one


def run_worker_burst():
    """Run an RQ worker in this process until the queue is empty (scheduled retries that are due
    are moved to the queue first)."""
    from smtpd_worker.worker import RelayWorker

    relay_queue = queue.relay_queue()
    RelayWorker([relay_queue], connection=queue.connection()).work(burst=True, with_scheduler=True)


def outbound(outbound_id):
    with models.db.connection_context():
        return models.OutboundEmail.get_by_id(outbound_id)


def events_of(outbound_id):
    with models.db.connection_context():
        ev = models.OutboundEvent
        return [(e.type, json.loads(e.detail)) for e in
                ev.select().where(ev.outbound == outbound_id).order_by(ev.id)]


def relay_until(outbound_id, statuses=("sent",), timeout=20):
    """Drive in-process burst workers until the row reaches one of ``statuses``."""

    def done():
        run_worker_burst()
        row = outbound(outbound_id)
        return row if row.status in statuses else None

    return wait_until(done, timeout=timeout, interval=0.2, what=f"row {outbound_id} to reach {statuses}")


class WorkerProcess:
    """`python -m cli worker` as a child process in its own session (signals reach only it)."""

    def __init__(self, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env, stdout=self.log,
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

    def start(**extra_env):
        config_file.write_text(dump_toml(relay_config))
        env = {**subprocess_env, **{k: str(v) for k, v in extra_env.items()}}
        worker = WorkerProcess(env, tmp_path / f"worker{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
