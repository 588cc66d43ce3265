#!/usr/bin/env python
"""SMTP submission throughput and memory, our server against aiosmtpd, in one run on loopback.

Peers (each a child process pinned to CPU 0 with taskset; this load generator runs on CPU 1):
  a  aiosmtpd: require_starttls, auth_require_tls, one user, a discard (Sink) handler
  b  ours with the DiscardBackend
  c  ours with the full pipeline: Postgres + Redis + blob store (no relay worker running)
All use the same ECDSA P-256 certificate. The load generator is gevent: STARTTLS, AUTH PLAIN,
one command at a time (no pipelining, aiosmtpd does not offer it), and it checks every reply.

Scenarios: 1 KB x 50 connections x 20 messages (msgs/s); 1 KB x 200 connections x 1 message
(connections/s); one 25 MB message on a fresh server (server RSS growth); 1,000 idle
authenticated TLS sessions (server RSS per session). Throughput scenarios alternate the peers
and report medians of --reps repetitions. Needs Postgres and Redis as the tests do
(INBOXLAYER_TEST_PG_DSN, INBOXLAYER_TEST_REDIS_URL).

    .venv/bin/python bench/smtp_throughput.py [--reps 5]
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import base64  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import psycopg2  # noqa: E402
import redis  # noqa: E402
from gevent.pool import Pool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN_DSN = os.environ.get("INBOXLAYER_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
REDIS_URL = os.environ.get("INBOXLAYER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SERVER_CPU, CLIENT_CPU = 0, 1
SENDER = "agent@inboxlayer.dev"
HOST = "127.0.0.1"
KB_MESSAGE_SIZE = 1024  # bytes
BIG_MESSAGE_SIZE = 26214400  # bytes: the advertised limit
IDLE_SESSIONS = 1000
RESUME_TLS = True  # reconnecting clients resume TLS sessions (tickets), as real agents' libraries do

AIOSMTPD_CODE = """
import asyncio, ssl, sys
from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP, AuthResult
host, port, cert, key, user, password = sys.argv[1:7]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
def authenticator(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=auth_data.login == user.encode() and auth_data.password == password.encode())
def factory():
    return SMTP(Sink(), require_starttls=True, auth_require_tls=True, tls_context=context,
                authenticator=authenticator, data_size_limit=26214400, hostname="localhost")
loop = asyncio.new_event_loop()
loop.run_until_complete(loop.create_server(factory, host, int(port)))
loop.run_forever()
"""
DISCARD_CODE = ("from gevent import monkey; monkey.patch_all()\n"
                "import sys\nfrom smtpd_worker import server\nserver.discard_main(sys.argv[1:])")


# -- load generator -----------------------------------------------------------------------------------

class SmtpError(Exception):
    pass


class Client:
    """A minimal SMTP client that checks every reply code."""

    def __init__(self, port, context, token, peer=None):
        self.peer = peer
        self.sock = socket.create_connection((HOST, port), timeout=120)
        # Without this, the end-of-data write waits on the server's delayed ACK (Nagle), ~40 ms.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.context, self.token = context, token

    def expect(self, code):
        while True:
            line = self.file.readline()
            if not line:
                raise SmtpError(f"connection closed, expected {code}")
            if line[3:4] != b"-":
                break
        if not line.startswith(code):
            raise SmtpError(f"expected {code}, got {line!r}")
        return line

    def command(self, line, code):
        self.sock.sendall(line)
        return self.expect(code)

    def login(self):
        self.expect(b"220")
        self.command(b"EHLO bench.example\r\n", b"250")
        self.command(b"STARTTLS\r\n", b"220")
        session = self.peer.tls_session if self.peer is not None else None
        self.sock = self.context.wrap_socket(self.sock, server_hostname="localhost", session=session)
        self.file = self.sock.makefile("rb")
        self.command(b"EHLO bench.example\r\n", b"250")
        if self.peer is not None and session is None and RESUME_TLS:
            self.peer.tls_session = self.sock.session  # TLS 1.3: the ticket came with the EHLO reply
        auth = base64.b64encode(f"\0{SENDER}\0{self.token}".encode())
        self.command(b"AUTH PLAIN " + auth + b"\r\n", b"235")

    def send(self, message):
        """One transaction; returns seconds from the end of DATA to the 250."""
        self.command(f"MAIL FROM:<{SENDER}>\r\n".encode(), b"250")
        self.command(b"RCPT TO:<someone@example.com>\r\n", b"250")
        self.command(b"DATA\r\n", b"354")
        self.sock.sendall(message)
        started = time.perf_counter()
        self.sock.sendall(b".\r\n")
        self.expect(b"250")
        return time.perf_counter() - started

    def quit(self):
        self.command(b"QUIT\r\n", b"221")
        self.sock.close()


def make_message(size):
    head = f"From: {SENDER}\r\nTo: someone@example.com\r\nSubject: bench\r\n\r\n".encode()
    body_size = size - len(head)
    lines = (body_size - 2) // 78
    message = head + (b"m" * 76 + b"\r\n") * lines + b"n" * (body_size - lines * 78 - 2) + b"\r\n"
    assert len(message) == size
    return message


def run_sessions(peer, connections, messages_each, message):
    """``connections`` concurrent clients each sending ``messages_each``; (seconds, latencies)."""
    latencies = []

    def one(_):
        client = Client(peer.port, peer.context, peer.token, peer)
        client.login()
        for _ in range(messages_each):
            latencies.append(client.send(message))
        client.quit()

    started, server_cpu, client_cpu = time.perf_counter(), peer.cpu_seconds(), time.process_time()
    pool = Pool(connections)
    for greenlet in [pool.spawn(one, i) for i in range(connections)]:
        greenlet.join()
        if greenlet.exception is not None:
            raise greenlet.exception
    seconds = time.perf_counter() - started
    peer.last_cpu = (peer.cpu_seconds() - server_cpu, time.process_time() - client_cpu)
    return seconds, latencies


def p99(latencies):
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


# -- peers --------------------------------------------------------------------------------------------------

class Peer:
    def __init__(self, name, argv, env, port, token, context, log_path):
        self.name, self.port, self.token, self.context = name, port, token, context
        log = open(log_path, "ab")
        self.proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU)] + argv, env=env, cwd=ROOT,
                                     stdout=log, stderr=log)
        log.close()
        self._wait_listening()

    def _wait_listening(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                gevent.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen")

    tls_session = None
    last_cpu = (0.0, 0.0)  # (server, load generator) CPU seconds of the last run

    def cpu_seconds(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self, field="VmRSS"):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(field)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, workdir):
        self.workdir = workdir
        from core import devcert

        self.cert, self.key = devcert.ensure_dev_certificate(workdir / "var" / "tls", "localhost")
        # The load generator measures servers: it does not verify the (same, self-signed)
        # certificate thousands of times, an ECDSA verify costs more than the server's sign.
        self.context = ssl.create_default_context(cafile=self.cert)
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        self.prefix = f"bench{uuid.uuid4().hex[:8]}"
        self.db_name = f"inboxlayer_bench_{uuid.uuid4().hex[:8]}"
        self.db_url = self._create_database()
        self.token = self._create_account()

    def _create_database(self):
        admin = psycopg2.connect(PG_ADMIN_DSN)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{self.db_name}"')
        admin.close()
        params = dict(p.split("=", 1) for p in PG_ADMIN_DSN.split())
        return (f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
                f"{params.get('port', 5432)}/{self.db_name}")

    def _create_account(self):
        import models
        from core import accounts

        models.init_database(self.db_url)
        with models.db.connection_context():
            models.migrate_schema()
            with models.db.atomic():
                user = models.User.create(email="bench@example.com", password_hash="x", plan="free")
                _, token = accounts.create_token(user, "bench")
                accounts.create_inbox(user, "agent")
        models.db.obj.close_all()
        return token

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLAYER_")}
        env.update(DATABASE_URL=self.db_url, REDIS_URL=REDIS_URL, INBOXLAYER_REDIS_PREFIX=self.prefix,
                   INBOXLAYER_SERVER_DATA_DIR=str(self.workdir / "var"), INBOXLAYER_SMTP_HOST=HOST,
                   INBOXLAYER_SMTP_TLS_PORT="0", INBOXLAYER_SERVER_HOSTNAME="localhost",
                   # Limits out of the way: this measures the pipeline, not the plan.
                   INBOXLAYER_PLANS_FREE_DAILY_SEND_LIMIT="100000000",
                   INBOXLAYER_PLANS_FREE_SEND_RATE_PER_SECOND="100000000",
                   INBOXLAYER_PLANS_FREE_SEND_BURST="100000000",
                   # One load generator on one address, one account: 200 and 1,000 connections
                   # and 200 DATA uploads at once are the scenarios, not abuse.
                   INBOXLAYER_SMTP_MAX_CONNECTIONS_PER_IP="0", INBOXLAYER_SMTP_MAX_DATA_PER_ACCOUNT="0")
        env.update(extra)
        return env

    def start(self, name):
        port = free_port()
        log_path = self.workdir / f"{name}.log"
        if name == "aiosmtpd":
            argv = [sys.executable, "-c", AIOSMTPD_CODE, HOST, str(port), self.cert, self.key, SENDER, self.token]
            return Peer(name, argv, self.env(), port, self.token, self.context, log_path)
        metrics_port = free_port()  # the full pipeline's group commit batch sizes are read from here
        env = self.env(INBOXLAYER_SMTP_STARTTLS_PORT=str(port), INBOXLAYER_METRICS_SMTP_PORT=str(metrics_port))
        if name == "ours-discard":
            argv = [sys.executable, "-c", DISCARD_CODE, "--user", f"{SENDER}:{self.token}"]
        else:
            argv = [sys.executable, "-m", "cli", "smtpd"]
        peer = Peer(name, argv, env, port, self.token, self.context, log_path)
        peer.metrics_port = metrics_port
        return peer

    def cleanup(self):
        client = redis.Redis.from_url(REDIS_URL)
        for pattern in (f"{self.prefix}:*", f"rq:*{self.prefix}-*"):
            keys = list(client.scan_iter(pattern, count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i:i + 1000])
        admin = psycopg2.connect(PG_ADMIN_DSN)
        admin.autocommit = True
        admin.cursor().execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.db_name,))
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{self.db_name}"')
        admin.close()


PEERS = ["aiosmtpd", "ours-discard", "ours-full"]


def throughput_scenarios(bench, reps):
    """Alternate the peers within each repetition; return {scenario: {peer: [(rate, p99)]}}."""
    kb = make_message(KB_MESSAGE_SIZE)
    results = {"msgs": {p: [] for p in PEERS}, "conns": {p: [] for p in PEERS}}
    peers = {name: bench.start(name) for name in PEERS}
    try:
        for peer in peers.values():  # warm-up: imports, pools, TLS caches
            run_sessions(peer, 10, 2, kb)
        for rep in range(reps):
            order = PEERS if rep % 2 == 0 else list(reversed(PEERS))
            for name in order:
                seconds, latencies = run_sessions(peers[name], 50, 20, kb)
                results["msgs"][name].append((1000 / seconds, p99(latencies), peers[name].last_cpu, seconds))
            for name in order:
                seconds, latencies = run_sessions(peers[name], 200, 1, kb)
                results["conns"][name].append((200 / seconds, p99(latencies), peers[name].last_cpu, seconds))
            print(f"  repetition {rep + 1}/{reps} done", file=sys.stderr)
        results["batches"] = batch_sizes(peers["ours-full"])
    finally:
        for peer in peers.values():
            peer.stop()
    return results


def batch_sizes(peer):
    """(batches, messages) the full pipeline's group commit made so far (its /metrics)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{HOST}:{peer.metrics_port}/metrics", timeout=10).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("inboxlayer_submit_batch_size_")}
    return values.get("inboxlayer_submit_batch_size_count", 0), values.get("inboxlayer_submit_batch_size_sum", 0)


def memory_scenarios(bench):
    """Fresh server per peer and scenario; returns {scenario: {peer: (value, p99)}}."""
    small = make_message(KB_MESSAGE_SIZE)
    big = make_message(BIG_MESSAGE_SIZE)
    results = {"big": {}, "idle": {}}
    for name in PEERS:
        peer = bench.start(name)
        try:
            run_sessions(peer, 1, 1, small)
            before = peer.rss_kb()
            _, latencies = run_sessions(peer, 1, 1, big)
            results["big"][name] = ((peer.rss_kb("VmHWM") - before) / 1024, p99(latencies))
        finally:
            peer.stop()
        peer = bench.start(name)
        clients = []
        try:
            run_sessions(peer, 1, 1, small)
            before = peer.rss_kb()

            def open_session(_):
                client = Client(peer.port, peer.context, peer.token)
                client.login()
                clients.append(client)

            pool = Pool(100)
            for greenlet in [pool.spawn(open_session, i) for i in range(IDLE_SESSIONS)]:
                greenlet.join()
                if greenlet.exception is not None:
                    raise greenlet.exception
            gevent.sleep(0.5)  # let the server finish post-handshake work (session tickets)
            results["idle"][name] = ((peer.rss_kb() - before) / IDLE_SESSIONS, None)
        finally:
            for client in clients:
                client.sock.close()
            peer.stop()
    return results


def report(throughput, memory, reps):
    def median(values):
        return statistics.median(values)

    rows = []
    cpu_ms, busy = {}, {}
    batches, batched = throughput.pop("batches", (0, 0))
    for key, label, unit in (("msgs", "1 KB, 50 conns x 20 msgs", "msgs/s"),
                             ("conns", "1 KB, 200 conns x 1 msg", "conns/s")):
        runs = throughput[key]
        count = 1000 if key == "msgs" else 200
        rates = {p: median([run[0] for run in runs[p]]) for p in PEERS}
        lat = {p: median([run[1] for run in runs[p]]) * 1000 for p in PEERS}
        cpu_ms[key] = {p: median([run[2][0] for run in runs[p]]) * 1000 / count for p in PEERS}
        busy[key] = {p: (median([run[2][0] / run[3] for run in runs[p]]),
                         median([run[2][1] / run[3] for run in runs[p]])) for p in PEERS}
        rows.append((label, unit, {p: f"{rates[p]:,.0f}" for p in PEERS}, {p: f"{lat[p]:.1f}" for p in PEERS},
                     rates["ours-discard"] / rates["aiosmtpd"], rates["ours-full"] / rates["aiosmtpd"]))
    big = memory["big"]
    rows.append(("one 25 MB message, fresh server", "RSS growth MB", {p: f"{big[p][0]:.1f}" for p in PEERS},
                 {p: f"{big[p][1] * 1000:.0f}" for p in PEERS}, None, None))
    idle = memory["idle"]
    rows.append((f"{IDLE_SESSIONS:,} idle authenticated TLS sessions", "RSS KB/session",
                 {p: f"{idle[p][0]:.1f}" for p in PEERS}, {p: "-" for p in PEERS}, None, None))
    print(f"\nSMTP submission benchmark: loopback, server on CPU {SERVER_CPU}, load generator on CPU "
          f"{CLIENT_CPU}, medians of {reps} repetitions\n")
    header = f"| scenario | unit | {' | '.join(PEERS)} | p99 end-of-data->250 ms ({', '.join(PEERS)}) | b/a | c/a |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for label, unit, values, lat, ba, ca in rows:
        ratio = (lambda r: f"{r:.2f}" if r is not None else "-")
        print(f"| {label} | {unit} | {' | '.join(values[p] for p in PEERS)} | "
              f"{' / '.join(lat[p] for p in PEERS)} | {ratio(ba)} | {ratio(ca)} |")
    print()
    print("| scenario | server CPU ms per msg/conn (a / b / c) | CPU busy server, load generator (a / b / c) |")
    print("|---|---|---|")
    for key, label in (("msgs", "1 KB, 50 conns x 20 msgs"), ("conns", "1 KB, 200 conns x 1 msg")):
        print(f"| {label} | {' / '.join(f'{cpu_ms[key][p]:.2f}' for p in PEERS)} | "
              f"{' / '.join(f'{busy[key][p][0]:.0%}, {busy[key][p][1]:.0%}' for p in PEERS)} |")
    if batches:
        print(f"full pipeline group commit: {batched:,.0f} messages in {batches:,.0f} batches "
              f"(mean {batched / batches:.1f} a batch, warm-up and both scenarios)")
    print(f"server CPU ratio a/b (capacity ratio): msgs {cpu_ms['msgs']['aiosmtpd'] / cpu_ms['msgs']['ours-discard']:.2f}, "
          f"conns {cpu_ms['conns']['aiosmtpd'] / cpu_ms['conns']['ours-discard']:.2f}; a/c msgs "
          f"{cpu_ms['msgs']['aiosmtpd'] / cpu_ms['msgs']['ours-full']:.2f}")
    print()
    targets = [("msgs/s b/a >= 1.5", rows[0][4] >= 1.5), ("msgs/s c/a >= 0.5", rows[0][5] >= 0.5),
               ("conns/s b/a >= 1.5", rows[1][4] >= 1.5),
               ("25 MB RSS growth < 10 MB (b and c)", big["ours-discard"][0] < 10 and big["ours-full"][0] < 10),
               ("idle RSS < 64 KB/session (b and c)", idle["ours-discard"][0] < 64 and idle["ours-full"][0] < 64)]
    for name, ok in targets:
        print(f"{'met   ' if ok else 'MISSED'} {name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the throughput scenarios")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    args = parser.parse_args()
    if shutil.which("taskset") is None or os.cpu_count() < 2:
        sys.exit("needs taskset and at least two CPUs")
    os.sched_setaffinity(0, {CLIENT_CPU})
    workdir = Path(tempfile.mkdtemp(prefix="smtp-bench-"))
    bench = Bench(workdir)
    try:
        print("throughput scenarios...", file=sys.stderr)
        throughput = throughput_scenarios(bench, args.reps)
        print("memory scenarios...", file=sys.stderr)
        memory = memory_scenarios(bench)
        report(throughput, memory, args.reps)
    finally:
        bench.cleanup()
        if args.keep:
            print(f"logs in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
