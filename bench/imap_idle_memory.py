#!/usr/bin/env python
"""IMAP server memory per idle session: N logged-in TLS sessions with Sent selected (what a mail
client leaves open), the `inboxlayer imapd` process's RSS growth divided by N. The peer is the
same server's RSS with one session, measured in the same run. SQLite in a temporary directory;
needs Redis as the tests do (INBOXLAYER_TEST_REDIS_URL).

    .venv/bin/python bench/imap_idle_memory.py [--sessions 500]
"""
import argparse
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_session(port, context, address, token):
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="localhost")
    reader = sock.makefile("rb")
    reader.readline()
    for tag, command in (("a", f"LOGIN {address} {token}"), ("b", "SELECT Sent")):
        sock.sendall(f"{tag} {command}\r\n".encode())
        while True:
            line = reader.readline()
            if line.startswith(tag.encode() + b" "):
                assert b" OK " in line, line
                break
    return sock, reader


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=500)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imapbench-"))
    port = free_port()
    env = dict(os.environ, INBOXLAYER_SERVER_DATA_DIR=str(tmp), INBOXLAYER_IMAP_TLS_PORT=str(port),
               INBOXLAYER_IMAP_STARTTLS_PORT="0", INBOXLAYER_IMAP_MAX_CONNECTIONS_PER_IP="0",
               INBOXLAYER_SERVER_HOSTNAME="localhost",
               REDIS_URL=os.environ.get("INBOXLAYER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
               INBOXLAYER_REDIS_PREFIX=f"imapbench{os.getpid()}")
    subprocess.run([sys.executable, "-m", "cli", "db", "init"], cwd=ROOT, env=env, check=True, capture_output=True)
    code = ("import runtime, settings\nfrom tests.helpers import make_account\nruntime.configure(settings.get())\n"
            "a = make_account()\nprint(a.address, a.token)")
    address, token = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                                    capture_output=True, text=True).stdout.split()
    server = subprocess.Popen([sys.executable, "-m", "cli", "imapd"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        context = ssl.create_default_context(cafile=str(tmp / "tls" / "smtp-cert.pem"))
        sessions = [open_session(port, context, address, token)]
        time.sleep(1)
        baseline = rss_kb(server.pid)
        for _ in range(args.sessions - 1):
            sessions.append(open_session(port, context, address, token))
        time.sleep(2)
        grown = rss_kb(server.pid)
        per_session = (grown - baseline) / (args.sessions - 1)
        print(f"imapd RSS: {baseline} KB with 1 session, {grown} KB with {args.sessions}: "
              f"{per_session:.1f} KB per idle logged-in session (target < 64 KB); ratio to target "
              f"{per_session / 64:.2f}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
