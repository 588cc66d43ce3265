#!/usr/bin/env python
"""Webhook delivery throughput, and what pending deliveries cost the relay.

1. Deliveries per second per worker: N events (fan-out to one endpoint) are written, then W
   `inboxlayer worker` processes deliver them to a receiver on loopback that takes 50 ms per
   request (a typical small web app), timed from the workers being up to the last delivery.
2. Relay throughput with and without 1,000 pending deliveries (same run, same worker count): M
   messages are relayed to the SES stand-in (moto) by one worker, once with nothing else queued
   and once with 1,000 deliveries pending to the 50 ms receiver. The ratio is the cost.

Needs Postgres and Redis as the tests do (INBOXLAYER_TEST_PG_DSN, INBOXLAYER_TEST_REDIS_URL).

    .venv/bin/python bench/webhook_throughput.py [--events 300] [--workers 1,2] [--messages 200] [--pending 1000]
"""
import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path

import redis
import requests
from peewee import fn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import models  # noqa: E402
import runtime  # noqa: E402
import settings  # noqa: E402
from core import events  # noqa: E402
from core import submit  # noqa: E402
from core import webhooks  # noqa: E402
from relay_throughput import REDIS_URL  # noqa: E402
from relay_throughput import create_database  # noqa: E402
from relay_throughput import drop_database  # noqa: E402
from relay_throughput import start_moto  # noqa: E402
from relay_throughput import wait_sent  # noqa: E402
from tests.helpers import dump_toml  # noqa: E402
from tests.helpers import make_account  # noqa: E402

RECEIVER_LATENCY = 0.050  # seconds per request


def start_receiver():
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(RECEIVER_LATENCY)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/hook"


class Stack:
    """A fresh database and Redis prefix, an account with an endpoint, and worker processes."""

    def __init__(self, endpoint, workdir, hook_url, hook_types):
        requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
        self.db_name, db_url = create_database()
        self.prefix = f"bench{uuid.uuid4().hex[:8]}"
        config = settings.load_config(environ={
            "DATABASE_URL": db_url, "REDIS_URL": REDIS_URL, "INBOXLAYER_REDIS_PREFIX": self.prefix,
            "INBOXLAYER_SERVER_DATA_DIR": str(workdir / self.prefix), "INBOXLAYER_SES_ENDPOINT_URL": endpoint,
            "INBOXLAYER_SERVER_LOG_LEVEL": "WARNING", "INBOXLAYER_SERVER_DEFAULT_PLAN": "pro",
            "INBOXLAYER_WEBHOOKS_ALLOW_LOOPBACK": "true"})
        runtime.configure(config)
        with models.db.connection_context():
            models.migrate_schema()
        import boto3

        boto3.client("sesv2", endpoint_url=endpoint, region_name="us-east-1").create_email_identity(
            EmailIdentity=config["server"]["default_domain"])
        self.account = make_account(plan="pro")
        with models.db.connection_context():
            webhooks.create_endpoint(self.account.user, hook_url, hook_types)
        path = workdir / f"{self.prefix}.toml"
        path.write_text(dump_toml(config))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLAYER_")}
        self.env["INBOXLAYER_CONFIG"] = str(path)
        self.workdir, self.procs = workdir, []

    def record_events(self, count):
        with models.db.connection_context(), models.db.atomic():
            for n in range(count):
                events.record("domain.verified", self.account.user.id, {"domain": f"d{n}.example.com"})

    def submit(self, count):
        raw = f"From: {self.account.address}\r\nTo: rcpt@example.com\r\nSubject: bench\r\n\r\nhello\r\n".encode()
        return [submit.submit(self.account.user, self.account.inbox, self.account.address, ["rcpt@example.com"],
                              io.BytesIO(raw), via="api").id for _ in range(count)]

    def start_workers(self, count):
        from rq import Worker

        from core import outbox

        self.procs += [subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=self.env, cwd=ROOT,
                                        stdout=subprocess.DEVNULL,
                                        stderr=open(self.workdir / f"{self.prefix}-w{i}.log", "wb"))
                       for i in range(count)]
        deadline = time.monotonic() + 60
        while len(Worker.all(queue=outbox.relay_queue())) < count:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.02)
        return models.utcnow()

    def delivered_since(self, since):
        d = models.WebhookDelivery
        with models.db.connection_context():
            return d.select(fn.COUNT(d.id), fn.MAX(d.completed_at)).where(
                d.status == "delivered", d.completed_at > since).tuples().first()

    def pending(self):
        with models.db.connection_context():
            return models.WebhookDelivery.select().where(models.WebhookDelivery.status == "pending").count()

    def close(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(60)
        close_all = getattr(models.db.obj, "close_all", None)
        if close_all:
            close_all()
        drop_database(self.db_name)
        client = redis.Redis.from_url(REDIS_URL)
        for pattern in (f"{self.prefix}:*", f"rq:*{self.prefix}-*"):
            keys = list(client.scan_iter(pattern, count=1000))
            if keys:
                client.delete(*keys)


def deliveries_per_second(workers, count, endpoint, workdir, hook_url):
    stack = Stack(endpoint, workdir, hook_url, ["domain.verified"])
    try:
        stack.record_events(count)
        ready = stack.start_workers(workers)
        deadline = time.monotonic() + 900
        while stack.pending():
            if time.monotonic() > deadline:
                raise RuntimeError("deliveries did not finish")
            time.sleep(0.1)
        done, last = stack.delivered_since(ready)
        return done / (last - ready).total_seconds()
    finally:
        stack.close()


def relay_rate(messages, pending, endpoint, workdir, hook_url):
    stack = Stack(endpoint, workdir, hook_url, ["domain.verified"])  # the relay's own events are not delivered
    try:
        stack.record_events(pending)
        ids = stack.submit(messages)
        ready = stack.start_workers(1)
        wait_sent(ids)
        e = models.OutboundEmail
        with models.db.connection_context():
            count, last = e.select(fn.COUNT(e.id), fn.MAX(e.sent_at)).where(e.sent_at > ready).tuples().first()
        left = stack.pending()
        return count / (last - ready).total_seconds(), left
    finally:
        stack.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--pending", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    receiver, hook_url = start_receiver()
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        workdir = Path(tmp)
        moto, moto_port = start_moto(workdir)
        endpoint = f"http://127.0.0.1:{moto_port}"
        try:
            print(f"webhook deliveries: {args.events} events to a receiver taking {RECEIVER_LATENCY * 1000:.0f} ms "
                  f"per request; Postgres + Redis, {os.cpu_count()} CPUs")
            rates = {}
            for workers in [int(w) for w in args.workers.split(",")]:
                rates[workers] = deliveries_per_second(workers, args.events, endpoint, workdir, hook_url)
                print(f"  {workers} worker(s): {rates[workers]:.1f} deliveries/s "
                      f"({rates[workers] / workers:.1f} per worker)")
            alone, _ = relay_rate(args.messages, 0, endpoint, workdir, hook_url)
            loaded, left = relay_rate(args.messages, args.pending, endpoint, workdir, hook_url)
            print(f"relay, 1 worker, {args.messages} messages: {alone:.1f} relayed/s alone, {loaded:.1f} relayed/s "
                  f"with {args.pending} deliveries pending ({left} still pending when the last message was sent): "
                  f"ratio {loaded / alone:.2f}")
        finally:
            moto.terminate()
            moto.wait(10)
            receiver.shutdown()


if __name__ == "__main__":
    main()
