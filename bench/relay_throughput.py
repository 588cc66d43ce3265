#!/usr/bin/env python
"""Relay throughput: N messages through W `inboxlayer worker` processes to the SES stand-in.

For each worker count (default 1 and 4, in the same run, alternating for --reps repetitions):
a fresh Postgres database and Redis prefix, W workers started and idle, then N messages accepted
through the one submit path (as fast as this process can) and timed until every row is `sent`.
Reports messages relayed per second (first acceptance to last `sent`) and the end-to-end
latency from acceptance (the 250) to `sent`, p50 and p99, and the 4-vs-1 ratio.

The SES stand-in is moto in server mode on loopback: it answers in a few milliseconds, so this
measures our own per-message cost (claim, events, blob read, HTTP call, result), not SES's.
Needs Postgres and Redis as the tests do (INBOXLAYER_TEST_PG_DSN, INBOXLAYER_TEST_REDIS_URL).

    .venv/bin/python bench/relay_throughput.py [--messages 400] [--workers 1,4] [--reps 1]
"""
import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
import redis
import requests
from peewee import fn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
import runtime  # noqa: E402
import settings  # noqa: E402
from core import submit  # noqa: E402
from tests.helpers import dump_toml  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.helpers import make_account  # noqa: E402
from tests.helpers import wait_for_port  # noqa: E402

PG_ADMIN_DSN = os.environ.get("INBOXLAYER_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
REDIS_URL = os.environ.get("INBOXLAYER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MESSAGE_SIZE = 2048  # bytes of body per message
LATENCY_PROBES = 60  # messages submitted one by one with the workers running
PROBE_RATE = 10  # probes per second: a steady load every worker count keeps up with


def start_moto(workdir):
    port = free_port()
    log = open(workdir / "moto.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log)
    wait_for_port(port, proc=proc)
    return proc, f"http://127.0.0.1:{port}"


def create_database():
    name = f"inboxlayer_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(PG_ADMIN_DSN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    admin.close()
    params = dict(p.split("=", 1) for p in PG_ADMIN_DSN.split())
    return name, (f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
                  f"{params.get('port', 5432)}/{name}")


def drop_database(name):
    admin = psycopg2.connect(PG_ADMIN_DSN)
    admin.autocommit = True
    admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


def wait_sent(ids, timeout=600):
    e = models.OutboundEmail
    deadline = time.monotonic() + timeout
    while True:
        with models.db.connection_context():
            rows = list(e.select().where(e.id.in_(ids), e.status == "sent"))
        if len(rows) == len(ids):
            return rows
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(rows)}/{len(ids)} sent")
        time.sleep(0.05)


def run_once(workers, messages, endpoint, workdir):
    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    db_name, db_url = create_database()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    config = settings.load_config(environ={
        "DATABASE_URL": db_url, "REDIS_URL": REDIS_URL, "INBOXLAYER_REDIS_PREFIX": prefix,
        "INBOXLAYER_SERVER_DATA_DIR": str(workdir / prefix), "INBOXLAYER_SES_ENDPOINT_URL": endpoint,
        "INBOXLAYER_SERVER_LOG_LEVEL": "WARNING", "INBOXLAYER_SERVER_DEFAULT_PLAN": "pro"})
    runtime.configure(config)
    with models.db.connection_context():
        models.migrate_schema()
    import boto3

    boto3.client("sesv2", endpoint_url=endpoint, region_name="us-east-1").create_email_identity(
        EmailIdentity=config["server"]["default_domain"])
    account = make_account(plan="pro")
    config_path = workdir / f"{prefix}.toml"
    config_path.write_text(dump_toml(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLAYER_")}
    env["INBOXLAYER_CONFIG"] = str(config_path)
    body = ("x" * 76 + "\r\n") * (MESSAGE_SIZE // 78)

    def accept(n):
        raw = f"From: {account.address}\r\nTo: rcpt@example.com\r\nSubject: bench {n}\r\n\r\n{body}".encode()
        return submit.submit(account.user, account.inbox, account.address, ["rcpt@example.com"],
                                 io.BytesIO(raw), via="api").id

    backlog = [accept(n) for n in range(messages)]  # phase 1: a queue of N, no worker yet
    procs = []
    try:
        from rq import Worker

        from core import outbox

        procs = [subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=open(workdir / f"{prefix}-w{i}.log", "wb"))
                 for i in range(workers)]
        deadline = time.monotonic() + 60
        while len(Worker.all(queue=outbox.relay_queue())) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.02)
        all_ready = models.utcnow()  # the early starters have begun; count only what follows
        wait_sent(backlog)
        e = models.OutboundEmail
        with models.db.connection_context():
            after = e.select(fn.COUNT(e.id), fn.MAX(e.sent_at)).where(e.sent_at > all_ready).tuples().first()
        relay_rate = after[0] / (after[1] - all_ready).total_seconds()
        probe = []  # phase 2: latency from acceptance (the 250) to sent, at a steady offered load
        for n in range(LATENCY_PROBES):
            probe.append(accept(messages + n))
            time.sleep(1.0 / PROBE_RATE)
        rows = wait_sent(probe)
        latencies = sorted((r.sent_at - r.created_at).total_seconds() for r in rows)
        sent_at_ses = len(requests.get(f"{endpoint}/moto-api/data.json", timeout=30).json()["ses"]["RawMessage"])
        return {
            "workers": workers, "messages": messages, "relay_rate": relay_rate,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "sent_at_ses": sent_at_ses, "expected_at_ses": messages + LATENCY_PROBES,
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        close_all = getattr(models.db.obj, "close_all", None)
        if close_all:
            close_all()
        drop_database(db_name)
        client = redis.Redis.from_url(REDIS_URL)
        for pattern in (f"{prefix}:*", f"rq:*{prefix}-*"):
            keys = list(client.scan_iter(pattern, count=1000))
            if keys:
                client.delete(*keys)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    counts = [int(w) for w in args.workers.split(",")]
    results = {w: [] for w in counts}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        moto, endpoint = start_moto(workdir)
        try:
            for _ in range(args.reps):
                for w in counts:
                    result = run_once(w, args.messages, endpoint, workdir)
                    assert result["sent_at_ses"] == result["expected_at_ses"], result  # each message exactly once
                    results[w].append(result)
        finally:
            moto.terminate()
            moto.wait(10)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"relay throughput: {args.messages} messages of ~{MESSAGE_SIZE} B, moto SES stand-in, "
          f"Postgres + Redis, {os.cpu_count()} CPUs, median of {args.reps} run(s)")
    print(f"{'workers':>7} {'relayed/s':>10} {'p50 ms':>8} {'p99 ms':>8}   (rate: draining a backlog of N; "
          f"latency: {LATENCY_PROBES} messages at {PROBE_RATE}/s, 250 -> sent)")
    medians = {}
    for w in counts:
        m = {k: statistics.median(r[k] for r in results[w]) for k in ("relay_rate", "p50_ms", "p99_ms")}
        medians[w] = m
        print(f"{w:>7} {m['relay_rate']:>10.0f} {m['p50_ms']:>8.0f} {m['p99_ms']:>8.0f}")
    if len(counts) >= 2:
        a, b = counts[0], counts[-1]
        print(f"{b} vs {a} workers: {medians[b]['relay_rate'] / medians[a]['relay_rate']:.2f}x relayed/s")


if __name__ == "__main__":
    main()
