"""The IMAP process's ops port (``metrics.imap_port``, bound to ``metrics.host``): ``/metrics``,
``/healthz`` and ``/readyz``, in the same shapes as web's (webapp/ops.py).

- ``/healthz``: 200 while the process runs; touches nothing.
- ``/readyz``: 200 when this process can serve a mail client, 503 otherwise, with each check's
  name and ``ok``: ``listening`` (its IMAP ports are open and it is not shutting down: a rolling
  restart takes it out of the load balancer first), ``database`` (logins and folders) and
  ``blobs`` (the stored messages). Redis is not a check: the failed-login throttle lets logins
  through when Redis is away (server.AuthThrottle), so the process still serves. A failed check's
  reason goes to the log, not to the answer (the port may be reachable by more than operators).
"""
import json
import logging
import time

from gevent.pywsgi import WSGIServer
from prometheus_client import make_wsgi_app

from core import health

log = logging.getLogger(__name__)


def readiness(server):
    """{name: (ok, detail)} for ``server`` (an ImapServer); never raises."""
    results = {"listening": (bool(server.listeners) and not server.stopping
                             and all(listener.started for listener in server.listeners.values()), "")}
    for name, check in (("database", health.check_database), ("blobs", health.check_blobs)):
        started = time.monotonic()
        try:
            results[name] = (True, f"{check()} ({(time.monotonic() - started) * 1000:.0f} ms)")
        except Exception as exc:  # a health check reports failures, whatever they are
            results[name] = (False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return results


def app(server):
    metrics_app = make_wsgi_app()

    def wsgi(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            results = readiness(server)
            ready = all(ok for ok, _ in results.values())
            for name, (ok, detail) in results.items():
                if not ok:
                    log.warning("not ready: %s failed %s", name, detail)
            return _json(start_response, "200 OK" if ready else "503 Service Unavailable",
                         {"status": "ready" if ready else "unavailable",
                          "checks": {name: {"ok": ok} for name, (ok, _) in results.items()}})
        return _json(start_response, "404 Not Found", {"error": "not found: /metrics, /healthz, /readyz"})

    return wsgi


def _json(start_response, status, body):
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def start(server, port, host):
    """Serve the ops port for ``server`` (0 = off). Returns the WSGIServer, or None."""
    if not port:
        return None
    ops = WSGIServer((host, port), app(server), log=None, error_log=log)
    ops.start()
    return ops
