#!/usr/bin/env python
"""Relay throughput against an SES stand-in that answers like SES: slowly.

Every SES call goes through a latency proxy (our own HTTP, a child process) that holds each
request --ses-latency ms (default 50) and then forwards it to the moto stand-in. In the same run:

  a  the ceiling: a bare boto3 loop (one client, --concurrency threads) sending N messages
     through the same proxy, no database, no queue;
  b  one `inboxlayer worker` process (relay.concurrency = --concurrency);
  c  two worker processes;
  b1 one worker with relay.concurrency = 1 (what a worker did before issue 12: one call at a time).

For b, c, b1: a fresh Postgres database and Redis prefix, the workers started and idle, N messages
accepted through the one submit path and timed until every row is `sent` (relayed/s from the
moment every worker is ready), then 60 messages at 10/s for the latency from acceptance (the 250)
to `sent`, p50 and p99. Every run checks that the stand-in received each message exactly once.
Then: the RSS of one worker holding --rss-inflight calls in flight (the proxy holds them 3 s), and
the SES rate governor's accuracy: --governor-rate messages/s for --governor-seconds through two
Governor objects (two "workers", one Redis schedule) and --concurrency threads each.

The 2-CPU development VM is shared with other work: read the ratios (same-run peers), not the
absolute figures. Needs Postgres and Redis as the tests do (INBOXLAYER_TEST_PG_DSN,
INBOXLAYER_TEST_REDIS_URL).

    .venv/bin/python bench/relay_throughput.py [--messages 400] [--ses-latency 50] [--reps 1]
"""
import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
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
SENDER_DOMAIN = "inboxlayer.dev"

# The latency proxy (a child process): asyncio, one upstream connection per request (Connection:
# close both ways keeps it a few lines), each request held `latency` s before it is forwarded.
PROXY_CODE = """
import asyncio, sys
upstream_port, port, latency = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

async def read_message(reader):
    head = await reader.readuntil(b"\\r\\n\\r\\n")
    length = 0
    lines = head.split(b"\\r\\n")
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name == b"content-length":
            length = int(line.split(b":", 1)[1])
        if name in (b"connection", b"keep-alive") or not line:
            continue
        kept.append(line)
    body = await reader.readexactly(length) if length else b""
    return b"\\r\\n".join(kept + [b"Connection: close", b"", b""]) + body

async def handle(reader, writer):
    try:
        request = await read_message(reader)
        await asyncio.sleep(latency)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        up_writer.write(request)
        await up_writer.drain()
        response = await up_reader.read(-1)
        up_writer.close()
        writer.write(response)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def start_moto(workdir):
    port = free_port()
    log = open(workdir / "moto.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log)
    wait_for_port(port, proc=proc)
    return proc, port


def start_proxy(upstream_port, latency_s, workdir):
    port = free_port()
    log = open(workdir / f"proxy-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", PROXY_CODE, str(upstream_port), str(port), str(latency_s)],
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


def moto_count(moto_url):
    return len(requests.get(f"{moto_url}/moto-api/data.json", timeout=60).json()["ses"]["RawMessage"])


def reset_moto(moto_url):
    import boto3

    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    boto3.client("sesv2", endpoint_url=moto_url, region_name="us-east-1").create_email_identity(
        EmailIdentity=SENDER_DOMAIN)


def raw_message(sender, n, body):
    return f"From: {sender}\r\nTo: rcpt@example.com\r\nSubject: bench {n}\r\n\r\n{body}".encode()


def body_of(size):
    return ("x" * 76 + "\r\n") * (size // 78)


# -- a: the ceiling -----------------------------------------------------------------------------

def bare_loop(messages, concurrency, proxy_url, moto_url):
    """N SendEmail calls through the proxy from `concurrency` threads sharing one boto3 client."""
    import boto3
    from botocore.config import Config

    reset_moto(moto_url)
    client = boto3.session.Session().client(
        "sesv2", endpoint_url=proxy_url, region_name="us-east-1",
        config=Config(max_pool_connections=concurrency, retries={"total_max_attempts": 1}))
    body = body_of(MESSAGE_SIZE)
    sender = f"agent@{SENDER_DOMAIN}"

    def send(n):
        client.send_email(FromEmailAddress=sender, Destination={"ToAddresses": ["rcpt@example.com"]},
                          Content={"Raw": {"Data": raw_message(sender, n, body)}})

    send(-1)  # warm the client and the connection pool
    started, cpu = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(messages)))
    rate = messages / (time.monotonic() - started)
    cpu_ms = 1000 * (time.process_time() - cpu) / messages
    assert moto_count(moto_url) == messages + 1
    return {"relay_rate": rate, "cpu_ms": cpu_ms}


# -- b, c: the workers ----------------------------------------------------------------------------

class Stack:
    """A fresh database, Redis prefix and settings file for one measurement."""

    def __init__(self, workdir, proxy_url, moto_url, **relay):
        reset_moto(moto_url)
        self.db_name, db_url = create_database()
        self.prefix = f"bench{uuid.uuid4().hex[:8]}"
        config = settings.load_config(environ={
            "DATABASE_URL": db_url, "REDIS_URL": REDIS_URL, "INBOXLAYER_REDIS_PREFIX": self.prefix,
            "INBOXLAYER_SERVER_DATA_DIR": str(workdir / self.prefix), "INBOXLAYER_SES_ENDPOINT_URL": proxy_url,
            "INBOXLAYER_SERVER_LOG_LEVEL": "WARNING", "INBOXLAYER_SERVER_DEFAULT_PLAN": "pro"})
        config["relay"].update(relay)
        runtime.configure(config)
        with models.db.connection_context():
            models.migrate_schema()
        self.account = make_account(plan="pro")
        config_path = workdir / f"{self.prefix}.toml"
        config_path.write_text(dump_toml(config))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLAYER_")}
        self.env["INBOXLAYER_CONFIG"] = str(config_path)
        self.workdir, self.procs = workdir, []

    def accept(self, n, size=MESSAGE_SIZE, body=None):
        a = self.account
        raw = raw_message(a.address, n, body or body_of(size))
        return submit.submit(a.user, a.inbox, a.address, ["rcpt@example.com"], io.BytesIO(raw), via="api").id

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


def run_workers(workers, concurrency, messages, proxy_url, moto_url, workdir, profile=None):
    stack = Stack(workdir, proxy_url, moto_url, concurrency=concurrency)
    try:
        backlog = [stack.accept(n) for n in range(messages)]  # phase 1: a queue of N, no worker yet
        stack.start_workers(workers)
        spy = start_profile(stack.procs[0].pid, profile) if profile else None
        all_ready = models.utcnow()  # the early starters have begun; count only what follows
        cpu_before = sum(cpu_seconds(p.pid) for p in stack.procs)
        switches_before = sum(context_switches(p.pid) for p in stack.procs)
        wait_sent(backlog)
        cpu_ms = 1000 * (sum(cpu_seconds(p.pid) for p in stack.procs) - cpu_before) / len(backlog)
        switches = (sum(context_switches(p.pid) for p in stack.procs) - switches_before) / len(backlog)
        if spy:
            stop_profile(spy)
        e = models.OutboundEmail
        with models.db.connection_context():
            after = e.select(fn.COUNT(e.id), fn.MAX(e.sent_at)).where(e.sent_at > all_ready).tuples().first()
        relay_rate = after[0] / (after[1] - all_ready).total_seconds()
        probe = []  # phase 2: latency from acceptance (the 250) to sent, at a steady offered load
        for n in range(LATENCY_PROBES):
            probe.append(stack.accept(messages + n))
            time.sleep(1.0 / PROBE_RATE)
        rows = wait_sent(probe)
        latencies = sorted((r.sent_at - r.created_at).total_seconds() for r in rows)
        at_ses = moto_count(moto_url)
        assert at_ses == messages + LATENCY_PROBES, (at_ses, messages + LATENCY_PROBES)  # each exactly once
        return {"relay_rate": relay_rate, "cpu_ms": cpu_ms, "switches": switches,
                "p50_ms": 1000 * statistics.median(latencies),
                "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}
    finally:
        stack.close()


def start_profile(pid, path):
    """py-spy (from this venv) sampling the worker while it drains, holding the GIL only."""
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "--nonblocking",
                            "--format", "raw", "-r", "200", "-p", str(pid), "-o", path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return spy


def stop_profile(spy):
    spy.send_signal(signal.SIGINT)
    spy.wait(60)


def context_switches(pid):
    """Voluntary + involuntary context switches of a process's live threads so far (a thread
    blocking on I/O or waiting for the GIL switches; a thread that exited is not counted)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread exited meanwhile
        total += sum(int(line.split()[1]) for line in text.splitlines() if "ctxt_switches:" in line)
    return total


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_in_flight(inflight, size, moto_url, workdir):
    """Peak RSS of one worker holding `inflight` SES calls (messages of `size` bytes) in flight."""
    proxy, slow_url = start_proxy(int(moto_url.rsplit(":", 1)[1]), 3.0, workdir)
    stack = Stack(workdir, slow_url, moto_url, concurrency=inflight, max_inflight_bytes=inflight * size * 2)
    try:
        body = body_of(size)
        ids = [stack.accept(n, body=body) for n in range(inflight)]
        stack.start_workers(1)
        pid = stack.procs[0].pid
        peak, in_flight_seen = 0, 0
        e = models.OutboundEmail
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with models.db.connection_context():
                counts = dict(e.select(e.status, fn.COUNT(e.id)).group_by(e.status).tuples())
            in_flight_seen = max(in_flight_seen, counts.get("sending", 0))
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            peak = max(peak, rss)
            if counts.get("sent", 0) == len(ids):
                break
            time.sleep(0.05)
        return {"rss_mb": peak / 1024, "in_flight_seen": in_flight_seen, "size": size}
    finally:
        stack.close()
        proxy.terminate()
        proxy.wait(10)


def governor_accuracy(rate, seconds, threads):
    """Sends scheduled by two Governor objects sharing one Redis schedule at `rate`/s."""
    from core import outbox
    from core import ses_rate

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    config = settings.load_config(environ={"REDIS_URL": REDIS_URL, "INBOXLAYER_REDIS_PREFIX": prefix,
                                           "INBOXLAYER_RELAY_MAX_SEND_RATE": str(rate)})
    settings.use(config)
    outbox.configure(config)
    governors = [ses_rate.Governor(), ses_rate.Governor()]
    stamps, lock, stop = [], threading.Lock(), threading.Event()

    def sender(governor):
        while not stop.is_set():
            delay = governor.reserve()
            if delay:
                time.sleep(delay)
            with lock:
                stamps.append(time.monotonic())

    pool = [threading.Thread(target=sender, args=(governors[i % 2],)) for i in range(threads)]
    for t in pool:
        t.start()
    time.sleep(2)  # warm-up: the bucket's initial slot and thread start
    start = time.monotonic()
    time.sleep(seconds)
    end = time.monotonic()
    stop.set()
    for t in pool:
        t.join()
    outbox.connection().delete(ses_rate.schedule_key())
    achieved = sum(1 for s in stamps if start <= s < end) / (end - start)
    return {"target": rate, "achieved": achieved, "error_pct": 100 * (achieved - rate) / rate}


def median_of(results, key):
    return statistics.median(r[key] for r in results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--ses-latency", type=float, default=50, help="ms the proxy holds each SES call")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--rss-inflight", type=int, default=100)
    parser.add_argument("--rss-size", type=int, default=100_000, help="bytes per message in the RSS run")
    parser.add_argument("--governor-rate", type=float, default=100)
    parser.add_argument("--governor-seconds", type=float, default=30)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c,b1,rss,governor")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument("--profile", metavar="PATH", help="py-spy the part-b worker while it drains (raw "
                        "collapsed stacks, GIL-holding samples only) into PATH; pip install py-spy first")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    skip = set(filter(None, args.skip.split(",")))
    parts = [p for p in ("a", "b", "c", "b1") if p not in skip]
    results = {p: [] for p in parts}
    extra = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        moto, moto_port = start_moto(workdir)
        moto_url = f"http://127.0.0.1:{moto_port}"
        proxy, proxy_url = start_proxy(moto_port, args.ses_latency / 1000, workdir)
        try:
            for _ in range(args.reps):
                for part in parts:  # alternating, so a busy spell on the machine hits every peer
                    if part == "a":
                        results[part].append(bare_loop(args.messages, args.concurrency, proxy_url, moto_url))
                    else:
                        workers, concurrency = {"b": (1, args.concurrency), "c": (2, args.concurrency),
                                                "b1": (1, 1)}[part]
                        messages = args.messages if part != "b1" else max(50, args.messages // 8)
                        profile = args.profile if part == "b" else None
                        results[part].append(run_workers(workers, concurrency, messages, proxy_url, moto_url,
                                                         workdir, profile))
            if "rss" not in skip:
                extra["rss"] = rss_in_flight(args.rss_inflight, args.rss_size, moto_url, workdir)
            if "governor" not in skip:
                extra["governor"] = governor_accuracy(args.governor_rate, args.governor_seconds, args.concurrency)
        finally:
            for proc in (proxy, moto):
                proc.terminate()
                proc.wait(10)
    if args.json:
        print(json.dumps({"results": results, **extra}, indent=2))
        return
    print(f"relay throughput: {args.messages} messages of ~{MESSAGE_SIZE} B, SES = moto behind a "
          f"{args.ses_latency:.0f} ms latency proxy, Postgres + Redis, {os.cpu_count()} CPUs, "
          f"median of {args.reps} run(s)")
    names = {"a": f"bare boto3 loop, {args.concurrency} threads (ceiling)",
             "b": f"1 worker, concurrency {args.concurrency}", "c": f"2 workers, concurrency {args.concurrency}",
             "b1": "1 worker, concurrency 1 (as before)"}
    print(f"{'peer':<44} {'relayed/s':>10} {'CPU ms/msg':>10} {'p50 ms':>8} {'p99 ms':>8} {'cs/msg':>7}   (p50/p99: "
          f"250 -> sent, {LATENCY_PROBES} messages at {PROBE_RATE}/s; CPU and cs (context switches): the "
          "worker process(es) while draining)")
    medians = {}
    for part in parts:
        m = {k: median_of(results[part], k) for k in ("relay_rate", "cpu_ms", "p50_ms", "p99_ms", "switches")
             if k in results[part][0]}
        medians[part] = m
        p50 = f"{m['p50_ms']:>8.0f}" if "p50_ms" in m else f"{'-':>8}"
        p99 = f"{m['p99_ms']:>8.0f}" if "p99_ms" in m else f"{'-':>8}"
        switches = f"{m['switches']:>7.0f}" if "switches" in m else f"{'-':>7}"
        print(f"{names[part]:<44} {m['relay_rate']:>10.1f} {m['cpu_ms']:>10.1f} {p50} {p99} {switches}")
    if "a" in medians and "b" in medians:
        print(f"b/a (one worker / ceiling): {medians['b']['relay_rate'] / medians['a']['relay_rate']:.2f} "
              "(target >= 0.7)")
    if "b" in medians and "b1" in medians:
        print(f"b/b1 (concurrency {args.concurrency} / one at a time): "
              f"{medians['b']['relay_rate'] / medians['b1']['relay_rate']:.1f}x (target >= 10x)")
    if "b" in medians and "c" in medians:
        print(f"c/b (two workers / one): {medians['c']['relay_rate'] / medians['b']['relay_rate']:.2f}x")
    if "rss" in extra:
        r = extra["rss"]
        print(f"worker RSS with {r['in_flight_seen']} calls in flight ({r['size']} B messages): "
              f"{r['rss_mb']:.0f} MB (target < 200 MB)")
    if "governor" in extra:
        g = extra["governor"]
        print(f"governor: {g['target']:.0f}/s configured, {g['achieved']:.2f}/s achieved over "
              f"{args.governor_seconds:.0f} s ({g['error_pct']:+.2f} %, target within 5 %)")


if __name__ == "__main__":
    main()
