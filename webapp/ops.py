"""Operations endpoints: `/healthz`, `/readyz` and `/metrics`.

What the public may see and what only operators may:

- ``/healthz`` answers 200 without touching any dependency (liveness), for anyone.
- ``/readyz`` answers 200 or 503 for anyone, with each check's name and ``ok``; the check details
  (timings, endpoints, exception text) only for operators. The public answer is at most
  ``core.health.SHARED_MAX_AGE`` seconds old: one run per interval, however often it is asked.
- ``/metrics`` (Prometheus text) only for operators; anyone else gets 403.

An operator is a request carrying ``Authorization: Bearer <web.ops_token>`` (set it with
INBOXLAYER_WEB_OPS_TOKEN; empty = no token works), or one from a loopback address that no proxy
forwarded: behind a reverse proxy on the same host every request comes from loopback, so a request
with X-Forwarded-For / Forwarded is not trusted as local unless web.trusted_proxies has already
resolved the real client address.
"""
import hmac
import ipaddress

from flask import Blueprint
from flask import jsonify
from flask import request
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import generate_latest

from core import health
from core import metrics as _collectors  # noqa: F401 - importing it defines the collectors /metrics serves
from webapp.views import app_config
from webapp.views import app_settings

bp = Blueprint("ops", __name__)

FORWARDED_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def _from_loopback():
    try:
        address = ipaddress.ip_address((request.remote_addr or "").split("%", 1)[0])
    except ValueError:
        return False
    if getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    if not address.is_loopback:
        return False
    # With trusted_proxies set, ProxyFix already put the real client in remote_addr.
    return bool(app_settings().web.trusted_proxies) or not any(h in request.headers for h in FORWARDED_HEADERS)


def _has_ops_token():
    expected = app_settings().web.ops_token
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if not expected or scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def is_operator():
    """True for a request with the ops token or from an unforwarded loopback client."""
    return _has_ops_token() or _from_loopback()


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    operator = is_operator()
    # Operators get a fresh run; the public shares one run per interval (see health.SHARED_MAX_AGE).
    results = health.run_all(app_config()) if operator else health.run_all_shared(app_config())
    ready = all(ok for ok, _ in results.values())
    body = {name: ({"ok": ok, "detail": detail} if operator else {"ok": ok})
            for name, (ok, detail) in results.items()}
    return jsonify(status="ready" if ready else "unavailable", checks=body), 200 if ready else 503


@bp.get("/metrics")
def metrics():
    if not is_operator():
        return jsonify(error={"code": "forbidden", "message": "Metrics are for operators: send "
                                                              "Authorization: Bearer <web.ops_token>"}), 403
    return generate_latest(), 200, {"Content-Type": CONTENT_TYPE_LATEST}
