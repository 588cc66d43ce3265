"""Prometheus metrics. Each process (web, smtp, worker) exposes its own registry:
web at GET /metrics, smtp and worker on ``metrics.port`` when set."""
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import start_http_server

from core import outbox

SMTP_SESSIONS = Counter("inboxlayer_smtp_sessions_total", "SMTP connections accepted", ["listener"])
SMTP_ACTIVE = Gauge("inboxlayer_smtp_active_sessions", "SMTP sessions open now")
SMTP_AUTH_FAILURES = Counter("inboxlayer_smtp_auth_failures_total", "Failed SMTP AUTH attempts")
IMAP_SESSIONS = Counter("inboxlayer_imap_sessions_total", "IMAP connections accepted", ["listener"])
IMAP_ACTIVE = Gauge("inboxlayer_imap_active_sessions", "IMAP sessions open now")
IMAP_AUTH_FAILURES = Counter("inboxlayer_imap_auth_failures_total", "Failed IMAP LOGIN/AUTHENTICATE attempts")
MESSAGES_ACCEPTED = Counter("inboxlayer_messages_accepted_total", "Messages accepted (250 / 202)", ["via"])
MESSAGES_REJECTED = Counter("inboxlayer_messages_rejected_total", "Messages refused (SMTP and API)", ["reason"])
MESSAGE_BYTES = Counter("inboxlayer_message_bytes_total", "Bytes of accepted messages", ["via"])
RELAY_ATTEMPTS = Counter("inboxlayer_relay_attempts_total", "SES send attempts", ["outcome"])
RELAY_LATENCY = Histogram("inboxlayer_relay_seconds", "Duration of one SES send call",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
SUBMIT_BATCH_SIZE = Histogram("inboxlayer_submit_batch_size", "Messages committed together (group commit)",
                              buckets=(1, 2, 4, 8, 16, 32, 64))
SUBMIT_WAITING = Gauge("inboxlayer_submit_waiting", "Messages queued behind the batch being committed")
STATUS_CHANGES = Counter("inboxlayer_outbound_status_total", "OutboundEmail status transitions", ["status"])


def refused(exc):
    """Count a refusal (a core.errors.SubmitError) by its reason; returns ``exc`` for the caller to raise."""
    MESSAGES_REJECTED.labels(reason=exc.code).inc()
    return exc


def start_http_exporter(port, host="0.0.0.0"):
    """Serve /metrics for a non-web process (smtp, worker)."""
    if port:
        start_http_server(port, addr=host)


def _queue_depth():
    try:
        return outbox.relay_queue().count
    except Exception:  # a scrape must not fail because Redis is down; NaN says "unknown"
        return float("nan")


READINESS_RUNS = Counter("inboxlayer_readiness_runs_total", "Readiness checks run (database, Redis, SES)")
QUEUE_DEPTH = Gauge("inboxlayer_relay_queue_depth", "Relay jobs waiting in Redis")
QUEUE_DEPTH.set_function(_queue_depth)
