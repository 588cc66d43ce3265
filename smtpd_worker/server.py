"""The SMTP submission listeners: gevent StreamServers on the STARTTLS and implicit-TLS ports.

``main(config)`` is `inboxlayer smtpd` (the process has called gevent.monkey.patch_all()).
``build(config, backend, ...)`` makes the same server for in-process use (the benchmark, or a
discard server for protocol tests via ``discard_main``). On SIGTERM the listeners stop
accepting, idle sessions get ``421`` and sessions in the middle of a command (DATA included) get
up to ``smtp.shutdown_grace`` seconds to finish before they are cut.

Slot exhaustion: each client address (an IPv6 client by its /64) may hold at most
``smtp.max_connections_per_ip`` connections, TLS handshakes included; the next is told
``421 4.7.0`` and closed before it costs a session. The deadlines that stop a connected client
from holding its slots by trickling bytes live in session.py.
"""
import argparse
import ipaddress
import logging
import signal
import socket
import sys
import time

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from core import blobs
from core import metrics
from smtpd_worker import tls
from smtpd_worker.session import HANDSHAKE_TIMEOUT
from smtpd_worker.session import TOO_MANY_CONNECTIONS
from smtpd_worker.session import Session
from smtpd_worker.session import SessionSettings

log = logging.getLogger(__name__)

SHUTDOWN_POLL = 0.05  # seconds between checks that the last session has finished
QUIT_GRACE = 1.0  # seconds an idle session may still send QUIT during shutdown before its 421
REFUSAL_POOL = 100  # greenlets that may be telling over-the-cap clients on the TLS port 421 at once
REFUSAL_TIMEOUT = 5  # seconds such a client gets for its TLS handshake before it is just closed


def client_key(ip):
    """What the per-address limits count by: an IPv4 address itself (also when IPv4-mapped), an
    IPv6 address by its /64, the block one end site gets, so one machine cannot dodge the cap
    with millions of addresses."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class CountsPerKey:
    """How many of something each key holds at once (connections per client address, DATA uploads
    per account), at most ``cap`` each (0 = no cap). One process, one greenlet at a time: no lock."""

    def __init__(self, cap):
        self.cap = cap
        self.counts = {}  # key -> held now; a key at zero is removed

    def take(self, key):
        """Count one more for ``key``; False (and nothing counted) when ``key`` is at its cap."""
        count = self.counts.get(key, 0)
        if self.cap and count >= self.cap:
            return False
        self.counts[key] = count + 1
        return True

    def give_back(self, key):
        count = self.counts.pop(key) - 1
        if count:
            self.counts[key] = count


class SubmissionServer:
    """Both listeners and the sessions they serve. ``starttls_port``/``tls_port`` None = off,
    0 = any free port (read the bound ports from ``addresses``)."""

    def __init__(self, settings, backend, tls_context, host, starttls_port, tls_port, max_connections,
                 shutdown_grace, max_connections_per_ip=0):
        self.settings = settings
        self.backend = backend
        self.tls_context = tls_context
        self.shutdown_grace = shutdown_grace
        self.stopping = False
        self.sessions = set()
        self.connections = CountsPerKey(max_connections_per_ip)  # per client_key, handshakes included
        self.transfers = CountsPerKey(settings.max_data_per_account)  # DATA uploads per account (Session.smtp_DATA)
        self.refusals = Pool(REFUSAL_POOL)
        self.listeners = {}
        for kind, port, implicit in (("starttls", starttls_port, False), ("tls", tls_port, True)):
            if port is None:
                continue
            handler = self._handle_implicit_tls if implicit else self._handle_starttls
            self.listeners[kind] = StreamServer((host, port), handler, spawn=Pool(max_connections))

    @property
    def addresses(self):
        return {kind: listener.address for kind, listener in self.listeners.items()}

    def start(self):
        for listener in self.listeners.values():
            listener.start()

    def wrap_tls(self, sock, deadline=None, limit=HANDSHAKE_TIMEOUT):
        """TLS handshake on an accepted socket (port 465 at once, port 587 after STARTTLS),
        finished within ``limit`` seconds and by ``deadline`` (time.monotonic(); the pre-AUTH
        deadline) or a TimeoutError. Absolute: gevent's ssl restarts its timeout on every
        read, so a client trickling its handshake would otherwise never run out of time."""
        seconds = min(limit, self.settings.idle_timeout)
        if deadline is not None:
            seconds = min(seconds, deadline - time.monotonic())
        if seconds <= 0:
            raise socket.timeout("no time left for a TLS handshake")
        sock.settimeout(seconds)
        tls_sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with gevent.Timeout(seconds, socket.timeout("TLS handshake not completed in time")):
            tls_sock.do_handshake()
        tls_sock.settimeout(self.settings.idle_timeout)
        return tls_sock

    def _handle_starttls(self, sock, peer):
        connected_at = time.monotonic()
        client = client_key(peer[0])
        if not self._admit(client):
            self._refuse(sock)
            return
        try:
            self._run(Session(self, sock, peer, tls=False, starttls_offered=True, connected_at=connected_at,
                              client=client))
        finally:
            self.connections.give_back(client)

    def _handle_implicit_tls(self, sock, peer):
        connected_at = time.monotonic()
        client = client_key(peer[0])
        if not self._admit(client):
            # The 421 has to wait for a handshake: do that off the listener's pool, so clients
            # over their cap never take a session slot, and drop them when too many are waiting.
            # (The listener closes ``sock`` when this handler returns: the refusal gets a dup.)
            if not self.refusals.full():
                self.refusals.spawn(self._refuse_after_handshake, sock.dup(), peer)
            return
        try:
            try:
                sock = self.wrap_tls(sock, self._pre_auth_deadline(connected_at))
            except OSError as exc:  # port scanners, plain-text clients, wrong TLS versions
                log.debug("TLS handshake with %s failed: %s", peer[0], exc)
                sock.close()
                return
            self._run(Session(self, sock, peer, tls=True, starttls_offered=False, connected_at=connected_at,
                              client=client))
        finally:
            self.connections.give_back(client)

    def _pre_auth_deadline(self, connected_at):
        seconds = self.settings.pre_auth_deadline
        return connected_at + seconds if seconds else None

    # -- connections per client address ----------------------------------------------------------

    def _admit(self, client):
        """Count a new connection from ``client``; False (and not counted) when it is over the cap."""
        if self.connections.take(client):
            return True
        log.debug("refused a connection from %s: %d open", client, self.connections.cap)  # debug: a flood must not flood the log
        return False

    @staticmethod
    def _refuse(sock):
        """421 and close, in clear text (port 587's greeting is clear text)."""
        try:
            sock.settimeout(REFUSAL_TIMEOUT)  # a fresh socket's send buffer takes one line at once
            sock.sendall((TOO_MANY_CONNECTIONS + "\r\n").encode())
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.close()

    def _refuse_after_handshake(self, sock, peer):
        try:
            sock = self.wrap_tls(sock, limit=REFUSAL_TIMEOUT)
        except OSError as exc:
            log.debug("TLS handshake with refused %s failed: %s", peer[0], exc)
            sock.close()
            return
        self._refuse(sock)

    def _run(self, session):
        self.sessions.add(session)
        metrics.SMTP_SESSIONS.labels(listener="starttls" if session.starttls_offered else "tls").inc()
        metrics.SMTP_ACTIVE.inc()
        try:
            session.handle()
        finally:
            metrics.SMTP_ACTIVE.dec()
            self.sessions.discard(session)

    def stop(self, grace=None):
        """Stop accepting, 421 the idle sessions, give busy ones ``grace`` seconds, cut the rest."""
        grace = self.shutdown_grace if grace is None else grace
        self.stopping = True
        for listener in self.listeners.values():
            listener.close()
        deadline = gevent.get_hub().loop.now() + grace
        while self.sessions and gevent.get_hub().loop.now() < deadline:
            now = time.monotonic()
            for session in list(self.sessions):
                # Idle for a moment: not a client about to QUIT after its 250 (see Session._serve).
                if session.idle and now - session.idle_since >= QUIT_GRACE:
                    session.interrupt()
            gevent.sleep(SHUTDOWN_POLL)
        if self.sessions:
            log.warning("cutting %d session(s) still busy after %ss", len(self.sessions), grace)
        for listener in self.listeners.values():
            listener.pool.kill(timeout=5)
        self.refusals.kill(timeout=1)


def build(config, backend, host=None, starttls_port=None, tls_port=None):
    """A SubmissionServer for ``config`` with ``backend``; ports default to the settings
    (where 0 means off); pass 0 here for a free port. Not started."""
    smtp = config["smtp"]
    if starttls_port is None:
        starttls_port = smtp["starttls_port"] or None
    if tls_port is None:
        tls_port = smtp["tls_port"] or None
    return SubmissionServer(SessionSettings.from_config(config), backend, tls.server_context(config),
                            host or smtp["host"], starttls_port, tls_port, smtp["max_connections"],
                            smtp["shutdown_grace"], smtp["max_connections_per_ip"])


def serve(server, protocol="SMTP submission", farewell="idle sessions get 421"):
    """Run ``server`` until SIGTERM or SIGINT, then shut it down gracefully. The IMAP server
    (imapd/server.py) runs the same way: ``protocol`` and ``farewell`` name it in the log."""
    stopped = Event()

    def shut_down():
        log.info("shutting down: no new connections, %s", farewell)
        server.stop()
        stopped.set()

    def on_signal():
        if not server.stopping:
            gevent.spawn(shut_down)

    gevent.signal_handler(signal.SIGTERM, on_signal)
    gevent.signal_handler(signal.SIGINT, on_signal)
    try:
        server.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        sys.exit(1)
    for kind, (host, port) in server.addresses.items():
        log.info("%s (%s) listening on %s:%d", protocol, "STARTTLS" if kind == "starttls" else "TLS", host, port)
    stopped.wait()
    log.info("stopped")


def main(config):
    """`inboxlayer smtpd`: the production server with the database backend."""
    # Imported here, not for a cycle: the database stack (psycopg2, peewee, redis, rq) is loaded
    # only by the production server; discard_main (protocol tests, the memory benchmark) never is.
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()  # before any connection: psycopg2 must yield to other sessions while it waits
    import runtime
    from smtpd_worker.backend import DbBackend

    runtime.configure(config)
    runtime.setup_logging(config)
    blobs.set_blocking_io(in_thread_pool)  # a slow disk flush must not stall every other session
    metrics.start_http_exporter(config["metrics"]["smtp_port"], config["metrics"]["host"])
    use_greenlet_local_connections()
    for key in ("starttls_port", "tls_port"):
        if config["smtp"][key] == 25:  # settings refuse this already; never rely on one guard alone
            log.error("smtp.%s = 25: port 25 is for inbound delivery, not submission", key)
            sys.exit(2)
    serve(build(config, DbBackend(config)))


def in_thread_pool(function, *args):
    """Run blocking ``function(*args)`` on gevent's thread pool; the calling greenlet waits, the others run."""
    return gevent.get_hub().threadpool.apply(function, args)


def use_greenlet_local_connections():
    """Give each greenlet (session) its own database connection state.

    peewee keeps the current connection in a subclass of ``threading.local`` defined when peewee
    is imported. `inboxlayer smtpd` imports it before gevent.monkey.patch_all() runs, so that
    state would be shared by every session: one session's query would run on another's
    connection ("Connection already opened"). A gevent ``local`` is per greenlet.
    """
    # peewee and models: only the production server loads the database stack (see main).
    import peewee
    from gevent.local import local

    import models

    class GreenletConnectionState(peewee._ConnectionState, local):
        pass

    models.db.obj._state = GreenletConnectionState()


def discard_main(argv=None):
    """A server with the DiscardBackend (protocol tests, benchmark peers). Settings come from
    the usual config.toml + INBOXLAYER_* environment; users from --user address:password."""
    # Imported here, not for a cycle: what the discard server needs, without the database stack.
    import runtime
    import settings
    from smtpd_worker.backend import DiscardBackend

    parser = argparse.ArgumentParser(description="SMTP submission with a discard backend")
    parser.add_argument("--user", action="append", default=[], help="address:password (repeatable)")
    parser.add_argument("--capture-dir", help="write each accepted message here as <id>.eml")
    args = parser.parse_args(argv)
    config = settings.get()
    runtime.setup_logging(config)
    users = dict(item.split(":", 1) for item in args.user)
    smtp = settings.current().smtp
    backend = DiscardBackend(users, capture_dir=args.capture_dir, max_auth_failures=smtp.max_auth_failures,
                             auth_failure_window=smtp.auth_failure_window)
    serve(build(config, backend))
