"""The audit trail: every authentication (success or failure) and every accepted or refused send,
with the key's prefix, the client's IP and the protocol.

Cheap on the hot path: ``record`` appends to an in-process buffer and returns; a background thread
(a greenlet under gevent's monkey-patching) writes the buffer in one multi-row INSERT every
FLUSH_INTERVAL seconds or as soon as FLUSH_BATCH rows wait. A crash loses at most the rows of the
last interval; a reply never waits for an audit write. The buffer is bounded (MAX_PENDING): when
the database is down the oldest rows are dropped and counted, never the process's memory.
"""
import atexit
import collections
import datetime
import logging
import threading
from dataclasses import dataclass

import models
import settings
from core.errors import OUTAGES

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5  # seconds between writes of the buffer
FLUSH_BATCH = 200  # rows that trigger a write before the interval is up
MAX_PENDING = 50_000  # rows kept while the database does not answer; older ones are dropped
MAX_DETAIL = 300  # characters of free text kept per row
PROTOCOLS = ("smtp", "api")
ACTIONS = ("auth", "send")
OUTCOMES = ("success", "failure", "accepted", "refused")


@dataclass
class Actor:
    """Who acts: the account and key (when known), the key prefix presented, protocol and client IP."""

    protocol: str
    client_ip: str = ""
    user_id: int | None = None
    token_id: int | None = None
    key_prefix: str = ""

    @classmethod
    def of_token(cls, token, protocol, client_ip):
        return cls(protocol=protocol, client_ip=client_ip or "", user_id=token.user_id, token_id=token.id,
                   key_prefix=token.prefix)


_pending = collections.deque(maxlen=MAX_PENDING)
_wake = threading.Event()
_lock = threading.Lock()
_writer = None
dropped = 0


def record(actor, action, outcome, reason="", detail=""):
    """Queue one audit row; never blocks on the database. ``actor`` None records nothing (callers
    that are not a client request, such as tests submitting directly)."""
    if actor is None:
        return
    _pending.append((actor.user_id, actor.token_id, (actor.key_prefix or "")[:16], action, outcome,
                     (reason or "")[:64], actor.protocol, (actor.client_ip or "")[:64], (detail or "")[:MAX_DETAIL],
                     models.utcnow()))  # in the order of COLUMNS
    _ensure_writer()
    if len(_pending) >= FLUSH_BATCH:
        _wake.set()


def flush():
    """Write every queued row now (the writer thread, exit, and tests call it). Returns rows written."""
    with _lock:
        rows = []
        while _pending:
            rows.append(_pending.popleft())
        if not rows:
            return 0
        try:
            with models.db.connection_context(), models.db.atomic():
                for start in range(0, len(rows), FLUSH_BATCH):
                    _insert(rows[start:start + FLUSH_BATCH])
        except OUTAGES as exc:
            global dropped
            dropped += len(rows)
            log.warning("audit trail: %d row(s) not written: %s", len(rows), exc)
            return 0
        return len(rows)


COLUMNS = ("user_id", "token_id", "key_prefix", "action", "outcome", "reason", "protocol", "client_ip", "detail",
           "occurred_at")


def _insert(rows):
    """One multi-row INSERT, its text written here: peewee's insert_many built it value by value,
    which cost the SMTP server more CPU than the write itself."""
    p = models.db.obj.param
    one = f"({', '.join([p] * len(COLUMNS))})"
    models.db.execute_sql(f"INSERT INTO audit_event ({', '.join(COLUMNS)}) VALUES {', '.join([one] * len(rows))}",
                          [value for row in rows for value in row])


PRUNE_BATCH = 10_000  # rows deleted per statement, so a long backlog never holds one huge transaction


def prune(now=None):
    """Delete audit rows older than ``audit.retention_days``. A periodic task; returns how many."""
    cutoff = (now or models.utcnow()) - datetime.timedelta(days=settings.current().audit.retention_days)
    removed = 0
    with models.db.connection_context():
        while True:
            old = [row.id for row in models.AuditEvent.select(models.AuditEvent.id)
                   .where(models.AuditEvent.occurred_at < cutoff).limit(PRUNE_BATCH)]
            if not old:
                return removed
            removed += models.AuditEvent.delete().where(models.AuditEvent.id.in_(old)).execute()


def _run():
    while True:
        _wake.wait(FLUSH_INTERVAL)
        _wake.clear()
        try:
            flush()
        except Exception:  # the writer's top-level boundary: never let the thread die
            log.exception("audit trail writer failed")


def _ensure_writer():
    global _writer
    if _writer is None or not _writer.is_alive():
        with _lock:
            if _writer is None or not _writer.is_alive():
                _writer = threading.Thread(target=_run, name="audit-writer", daemon=True)
                _writer.start()


@atexit.register
def _flush_at_exit():
    try:
        flush()
    except Exception:  # noqa: BLE001 - best effort at exit; a lost audit row is acceptable
        pass
