"""The IMAP listeners: gevent StreamServers on the implicit-TLS port (993; 2993 in development)
and the STARTTLS port (143; 2143), where LOGIN/AUTHENTICATE are refused until TLS is up.

The same machinery as SMTP submission (smtpd_worker/server.py): its TLS context and deadline-bound
handshake, its per-client-address connection cap, greenlet-local database connections, and the
failed-auth throttle SMTP uses (one Redis counter per client address, shared by both protocols
and every node).
"""
import logging
import time

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer

from core import blobs
from core import limits
from core import metrics
from imapd import health
from imapd.session import HANDSHAKE_TIMEOUT
from imapd.session import Session
from imapd.session import SessionSettings
from smtpd_worker import tls
from smtpd_worker.server import CountsPerKey
from smtpd_worker.server import client_key
from smtpd_worker.server import in_thread_pool
from smtpd_worker.server import serve
from smtpd_worker.server import use_greenlet_local_connections

log = logging.getLogger(__name__)

TOO_MANY_CONNECTIONS = "* BYE Too many connections from your address"
SHUTDOWN_POLL = 0.05  # seconds


class AuthThrottle:
    """Failed logins per client address within the SMTP window, in the SMTP counter ("authfail")."""

    def __init__(self, max_failures, window):
        self.max_failures, self.window = max_failures, window

    def throttled(self, client):
        try:
            return limits.window_count("authfail", client) >= self.max_failures
        except limits.LimiterUnavailable as exc:
            log.warning("auth throttle unavailable: %s", exc)
            return False

    def record_failure(self, client):
        try:
            return limits.count_in_window("authfail", client, self.window) > self.max_failures
        except limits.LimiterUnavailable as exc:
            log.warning("auth throttle unavailable: %s", exc)
            return False


class ImapServer:
    def __init__(self, settings, throttle, tls_context, host, starttls_port, tls_port, max_connections,
                 max_connections_per_ip, shutdown_grace):
        self.settings = settings
        self.throttle = throttle
        self.tls_context = tls_context
        self.shutdown_grace = shutdown_grace
        self.stopping = False
        self.sessions = set()
        self.connections = CountsPerKey(max_connections_per_ip)
        self.listeners = {}
        for kind, port, implicit in (("starttls", starttls_port, False), ("tls", tls_port, True)):
            if port is None:
                continue
            handler = (lambda sock, peer, implicit=implicit: self._handle(sock, peer, implicit))
            self.listeners[kind] = StreamServer((host, port), handler, spawn=Pool(max_connections))

    @property
    def addresses(self):
        return {kind: listener.address for kind, listener in self.listeners.items()}

    def start(self):
        for listener in self.listeners.values():
            listener.start()

    def wrap_tls(self, sock, deadline=None, limit=HANDSHAKE_TIMEOUT):
        """TLS handshake finished within ``limit`` seconds and by ``deadline`` (absolute: a
        trickled handshake cannot hold the slot)."""
        seconds = limit if deadline is None else min(limit, deadline - time.monotonic())
        if seconds <= 0:
            raise TimeoutError("no time left for a TLS handshake")
        sock.settimeout(seconds)
        tls_sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with gevent.Timeout(seconds, TimeoutError("TLS handshake not completed in time")):
            tls_sock.do_handshake()
        return tls_sock

    def _handle(self, sock, peer, implicit):
        connected_at = time.monotonic()
        client = client_key(peer[0])
        if not self.connections.take(client):
            try:
                if implicit:
                    sock = self.wrap_tls(sock, limit=5)
                sock.settimeout(5)
                sock.sendall((TOO_MANY_CONNECTIONS + "\r\n").encode())
            except OSError:
                pass
            finally:
                sock.close()
            return
        try:
            if implicit:
                try:
                    pre_auth = self.settings.pre_auth_deadline
                    sock = self.wrap_tls(sock, connected_at + pre_auth if pre_auth else None)
                except OSError as exc:  # scanners, plain-text clients, wrong TLS versions
                    log.debug("TLS handshake with %s failed: %s", peer[0], exc)
                    sock.close()
                    return
            session = Session(self, sock, peer, tls=implicit, client=client, connected_at=connected_at)
            self.sessions.add(session)
            metrics.IMAP_SESSIONS.labels(listener="tls" if implicit else "starttls").inc()
            metrics.IMAP_ACTIVE.inc()
            try:
                session.handle()
            finally:
                metrics.IMAP_ACTIVE.dec()
                self.sessions.discard(session)
        finally:
            self.connections.give_back(client)

    def stop(self, grace=None):
        """Stop accepting; sessions waiting for a command (or in IDLE) get BYE; busy ones get ``grace`` seconds."""
        grace = self.shutdown_grace if grace is None else grace
        self.stopping = True
        for listener in self.listeners.values():
            listener.close()
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions):
                if session.idle:
                    session.interrupt()
            gevent.sleep(SHUTDOWN_POLL)
        for listener in self.listeners.values():
            listener.pool.kill(timeout=5)


def build(config, host=None, starttls_port=None, tls_port=None):
    imap = config["imap"]
    smtp = config["smtp"]
    if starttls_port is None:
        starttls_port = imap["starttls_port"] or None
    if tls_port is None:
        tls_port = imap["tls_port"] or None
    return ImapServer(SessionSettings.from_config(config),
                      AuthThrottle(smtp["max_auth_failures"], smtp["auth_failure_window"]),
                      tls.server_context(config), host or imap["host"], starttls_port, tls_port,
                      imap["max_connections"], imap["max_connections_per_ip"], imap["shutdown_grace"])


def main(config):
    """`inboxlayer imapd`: the production server."""
    # Imported here (not for a cycle): only the server process loads the database stack.
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    import runtime

    runtime.configure(config)
    runtime.setup_logging(config)
    blobs.set_blocking_io(in_thread_pool)  # a slow blob read stalls only the session reading it
    use_greenlet_local_connections()
    server = build(config)
    health.start(server, config["metrics"]["imap_port"], config["metrics"]["host"])  # /metrics, /readyz
    serve(server, protocol="IMAP", farewell="waiting sessions get BYE")
