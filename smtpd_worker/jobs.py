"""RQ jobs of the relay: ``relay_outbound(id)`` and the periodic ``reconcile_stale()``.

The database is the truth; Redis only carries hints ("look at row N"). A job may run twice, late,
or never; the row decides what happens:

- A worker *claims* a row with one conditional UPDATE (queued/sending, not leased -> sending,
  attempts + 1, ``next_attempt_at`` = lease expiry) and writes an ``attempt`` event in the same
  transaction, before it calls SES. Two workers can never both hold a row. While the attempt
  runs, a thread renews the lease (``relay.lease``), so only a dead worker's lease lapses.
- The result is recorded only while the claim is still ours (same attempt number).
- Between retries the row stays ``sending`` with ``next_attempt_at`` = when the retry is due, so
  users see one final outcome and a list of attempts, not a stream of soft failures.
- ``reconcile_stale`` re-enqueues rows whose lease or retry time passed ``relay.reconcile_after``
  ago without progress (enqueue lost, Redis flushed, worker SIGKILLed before or after its claim).
- A row failed without SES having accepted any part of it gives its sends back to the quota, in
  the transaction that fails it (``_give_back_quota``).

At-least-once window: if SES accepted a message and the worker died before recording it, the row
still ends with an ``attempt`` event and no result. The next claim sees that, records a
``possible_duplicate`` event and sends again. See docs/relay.md.
"""
import datetime
import json
import logging
import math
import os
import random
import socket
import threading
import time

from peewee import IntegrityError
from peewee import InterfaceError
from peewee import OperationalError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus
from rq.registry import StartedJobRegistry

import models
import settings
from core import blobs
from core import metrics
from core import outbox
from smtpd_worker import transport

log = logging.getLogger(__name__)

ACTIVE = ("queued", "sending")
RELAY_EVENT_TYPES = ("attempt", "batch_sent", "sent", "retry", "failed", "released")
# Events that say nothing about SES having the message (a ``retry`` is looked at: see _refused).
NO_SEND_EVENT_TYPES = ("queued", "attempt", "released", "failed")
# Errors raised before any byte of the request reached SES: nothing can have been accepted.
# (A read timeout or a dropped connection may hide an accepted message.)
NEVER_REACHED_SES = ("EndpointConnectionError", "ConnectTimeoutError", "BlobUnavailable")
DB_TRIES = 6  # a job rides out a database restart of a few seconds instead of failing
RECONCILE_BATCH = 500  # rows per reconciler pass
SCHEDULER_SLACK = 1  # seconds added to a retry's scheduled time (see _schedule)
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"

# Set by the worker on SIGTERM: a job that has not called SES yet hands its row back.
SHUTDOWN = threading.Event()


class Claim:
    """A row this worker holds for one attempt."""

    def __init__(self, row, attempt, blob_key, batches_done):
        self.row, self.attempt, self.blob_key = row, attempt, blob_key
        self.batches_done = batches_done  # {batch index: SES MessageId} from earlier attempts


# -- relay ------------------------------------------------------------------------------------

def relay_outbound(outbound_id):
    """Relay one OutboundEmail through SES. Safe to run any number of times."""
    claim = _with_db(_claim, outbound_id)
    if claim is None:
        return "skipped"
    with LeaseKeeper(claim):  # stopped before any result is written: those set next_attempt_at
        result = _attempt(claim)
    row = claim.row
    extra = {"outbound_id": row.public_id}
    if result is _RELEASE:
        _with_db(_release, claim, "worker shutting down before calling SES")
        _enqueue(row.id)
        log.info("released %s: worker shutting down", row.public_id, extra=extra)
        return "released"
    if isinstance(result, transport.RelayError):
        return _finish_error(claim, result)
    _with_db(_record_sent, claim, result)
    metrics.RELAY_ATTEMPTS.labels(outcome="sent").inc()
    metrics.STATUS_CHANGES.labels(status="sent").inc()
    log.info("sent %s as SES %s (attempt %d)", row.public_id, result, claim.attempt, extra=extra)
    return "sent"


_RELEASE = object()


def _attempt(claim):
    """The SES calls of one claimed attempt: the first batch's SES MessageId, a RelayError, or
    _RELEASE when the worker is shutting down before anything was sent."""
    row = claim.row
    try:
        data = _read_message(claim.blob_key)
    except blobs.BlobError as exc:
        return transport.RelayError("BlobUnavailable", str(exc), retryable=True)
    if SHUTDOWN.is_set():
        return _RELEASE
    batches = transport.recipient_batches(json.loads(row.recipients), data)
    done = dict(claim.batches_done)
    for index, batch in enumerate(batches):
        if index in done:
            continue  # SES accepted this batch in an earlier attempt
        try:
            done[index] = transport.send_raw(row.mail_from, batch, data, tags={"outbound_id": row.public_id})
        except transport.RelayError as err:
            return err
        if len(batches) > 1:
            _with_db(_record_batch, claim, index, len(batches), done[index])
    return done[0]


class LeaseKeeper(threading.Thread):
    """Renews a claim's lease every third of ``relay.lease`` while its attempt runs, so a live
    worker keeps its row however long SES takes, and a dead one (SIGKILL, lost machine) frees it
    within one lease instead of one job timeout."""

    def __init__(self, claim):
        super().__init__(name=f"lease-{claim.row.id}", daemon=True)
        self.claim = claim
        self.lease = settings.get()["relay"]["lease"]
        self.stopping = threading.Event()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stopping.set()
        self.join()

    def run(self):
        while not self.stopping.wait(self.lease / 3):
            try:
                if not _with_db(_renew_lease, self.claim, self.lease):
                    return  # the row moved on (an SES event settled it): nothing left to hold
            except Exception as exc:  # the database is down: the lease may lapse; the claim check guards results
                log.warning("could not renew the lease of row %s: %s", self.claim.row.id, exc)


def _renew_lease(claim, lease):
    e = models.OutboundEmail
    now = models.utcnow()
    return e.update(next_attempt_at=now + datetime.timedelta(seconds=lease)).where(_ours(claim)).execute()


def _read_message(blob_key):
    if blob_key is None:
        raise blobs.BlobError("the Sent copy was deleted before the message was relayed")
    with blobs.store().open(blob_key) as stream:
        return transport.strip_for_relay(stream)


def _claimable(outbound_id, now):
    e = models.OutboundEmail
    return ((e.id == outbound_id) & e.status.in_(ACTIVE)
            & (e.next_attempt_at.is_null() | (e.next_attempt_at <= now)))


def _claim(outbound_id):
    e = models.OutboundEmail
    relay_settings = settings.get()["relay"]
    now = models.utcnow()
    lease_until = now + datetime.timedelta(seconds=relay_settings["lease"])
    with models.db.atomic():
        # UPDATE first: it takes the write lock at once (SQLite) and is the compare-and-swap.
        claimed = (e.update(status="sending", attempts=e.attempts + 1, next_attempt_at=lease_until, updated_at=now)
                   .where(_claimable(outbound_id, now) & (e.attempts < relay_settings["max_attempts"]))
                   .execute())
        if not claimed:
            _give_up_if_exhausted(outbound_id, now, relay_settings["max_attempts"])
            return None
        row = e.get_by_id(outbound_id)
        if _last_relay_event(row.id) in ("attempt", "batch_sent"):
            _event(row, "possible_duplicate", {
                "attempt": row.attempts - 1,
                "message": "the previous attempt stopped after calling SES without a recorded result; "
                           "if SES accepted it, this attempt sends a second copy"})
        _event(row, "attempt", {"attempt": row.attempts, "worker": WORKER_NAME})
        return Claim(row, row.attempts, _blob_key(row), _batches_done(row.id))


def _blob_key(row):
    if row.message_id is None:
        return None
    return models.Message.select(models.Message.blob_key).where(models.Message.id == row.message_id).scalar()


def _batches_done(outbound_id):
    ev = models.OutboundEvent
    done = {}
    for event in ev.select(ev.detail).where(ev.outbound == outbound_id, ev.type == "batch_sent"):
        detail = json.loads(event.detail)
        done[detail["batch"]] = detail["ses_message_id"]
    return done


def _give_up_if_exhausted(outbound_id, now, max_attempts):
    """A claimable row with no attempts left: its last attempt was interrupted. Fail it."""
    e = models.OutboundEmail
    reason = f"gave up after {max_attempts} attempts; the last one was interrupted"
    failed = (e.update(status="failed", last_error=reason, completed_at=now, updated_at=now, next_attempt_at=None)
              .where(_claimable(outbound_id, now) & (e.attempts >= max_attempts)).execute())
    if failed:
        _event(e.get_by_id(outbound_id), "failed", {"message": reason, "attempts": max_attempts})


def _last_relay_event(outbound_id):
    ev = models.OutboundEvent
    return (ev.select(ev.type).where(ev.outbound == outbound_id, ev.type.in_(RELAY_EVENT_TYPES))
            .order_by(ev.id.desc()).limit(1).scalar())


def _ours(claim):
    e = models.OutboundEmail
    return (e.id == claim.row.id) & (e.status == "sending") & (e.attempts == claim.attempt)


def _record_sent(claim, ses_message_id):
    e = models.OutboundEmail
    now = models.utcnow()
    with models.db.atomic():
        updated = (e.update(status="sent", ses_message_id=ses_message_id, sent_at=now, updated_at=now,
                            next_attempt_at=None, last_error=None)
                   .where(_ours(claim)).execute())
        detail = {"attempt": claim.attempt, "ses_message_id": ses_message_id}
        if not updated:
            # A delivery event (matched by tag) got here first, or our lease ran out: keep the id.
            (e.update(ses_message_id=ses_message_id)
             .where((e.id == claim.row.id) & e.ses_message_id.is_null()).execute())
            detail["note"] = "the row had moved on before this result was recorded"
        _event(claim.row, "sent", detail, dedupe_key=f"sent:{ses_message_id}")


def _record_batch(claim, index, count, ses_message_id):
    """SES accepted one recipient batch of a message with more recipients than one call takes."""
    _event(claim.row, "batch_sent", {"attempt": claim.attempt, "batch": index, "batches": count,
                                     "ses_message_id": ses_message_id}, dedupe_key=f"batch:{ses_message_id}")


def _finish_error(claim, err):
    """Record a failed attempt: schedule a retry, or fail the row for good."""
    delay = _with_db(_record_error, claim, err)
    extra = {"outbound_id": claim.row.public_id}
    if delay is None:
        metrics.RELAY_ATTEMPTS.labels(outcome="failed").inc()
        metrics.STATUS_CHANGES.labels(status="failed").inc()
        log.warning("failed %s: %s", claim.row.public_id, err, extra=extra)
        return "failed"
    metrics.RELAY_ATTEMPTS.labels(outcome="retry").inc()
    log.info("retrying %s in %d s: %s", claim.row.public_id, delay, err, extra=extra)
    _schedule(claim.row.id, claim.attempt, delay)
    return "retry"


def _record_error(claim, err):
    e = models.OutboundEmail
    max_attempts = settings.get()["relay"]["max_attempts"]
    now = models.utcnow()
    with models.db.atomic():
        if err.retryable and claim.attempt < max_attempts:
            delay = backoff_delay(claim.attempt)
            updated = (e.update(next_attempt_at=now + datetime.timedelta(seconds=delay), last_error=str(err),
                                updated_at=now).where(_ours(claim)).execute())
            if updated:
                _event(claim.row, "retry", {**err.as_detail(), "attempt": claim.attempt, "delay": delay,
                                            "message": f"retry scheduled in {delay} s: {err}"})
            return delay if updated else None
        reason = str(err) if not err.retryable else f"gave up after {claim.attempt} attempts: {err}"
        updated = (e.update(status="failed", last_error=reason, completed_at=now, updated_at=now,
                            next_attempt_at=None).where(_ours(claim)).execute())
        if updated:
            detail = {**err.as_detail(), "attempt": claim.attempt, "message": reason}
            refund = _give_back_quota(claim.row, err)
            if refund:
                detail["quota_refunded"] = refund
            _event(claim.row, "failed", detail)
        return None


def _give_back_quota(row, err):
    """The row has just been failed, in this transaction: if SES certainly has no part of the
    message, give its sends back to the day they were charged (its created_at, UTC). Only the
    claim holder fails a row, and only once, so the give-back happens once with the status
    change. Returns the event detail of the refund, or None."""
    if not _certainly_unsent(row.id, err.as_detail()):
        return None
    sends = len(json.loads(row.recipients))
    day = row.created_at.date()
    if not models.refund_send(row.user_id, day, sends):
        return None
    return {"sends": sends, "day": day.isoformat()}


def _certainly_unsent(outbound_id, final_error):
    """True when no SES call can have accepted any batch: the final error and every earlier
    retry were refusals (see _refused), no batch was accepted, no attempt was interrupted
    (``possible_duplicate``) and no SES event arrived. Anything else may have reached someone."""
    if not _refused(final_error):
        return False
    ev = models.OutboundEvent
    for event in ev.select(ev.type, ev.detail).where(ev.outbound == outbound_id, ev.type.not_in(NO_SEND_EVENT_TYPES)):
        if event.type != "retry" or not _refused(json.loads(event.detail)):
            return False
    return True


def _refused(error_detail):
    """SES answered the call with an error (it has an HTTP status), or the call never left us."""
    return error_detail.get("status") is not None or error_detail.get("code") in NEVER_REACHED_SES


def _release(claim, reason):
    """Hand the row back untouched (the attempt does not count): nobody called SES."""
    e = models.OutboundEmail
    with models.db.atomic():
        released = (e.update(status="queued" if claim.attempt == 1 else "sending", attempts=e.attempts - 1,
                             next_attempt_at=None, updated_at=models.utcnow())
                    .where(_ours(claim)).execute())
        if released:
            _event(claim.row, "released", {"attempt": claim.attempt, "message": reason})


def backoff_delay(attempt):
    """Seconds before retry after ``attempt``: base * 2**(attempt-1), capped, jittered into its
    upper half so that a throttled burst does not come back in lockstep."""
    relay_settings = settings.get()["relay"]
    ceiling = min(relay_settings["backoff_max"], relay_settings["backoff_base"] * 2 ** (attempt - 1))
    return max(1, math.ceil(ceiling * random.uniform(0.5, 1.0)))


def _schedule(outbound_id, attempt, delay):
    """Enqueue the retry at its due time (RQ scheduler in the workers); the reconciler is the backstop."""
    try:
        # RQ's scheduler keeps whole-second scores and may fire up to a second early; a job that
        # arrives before next_attempt_at finds the row not due and does nothing, so aim late.
        outbox.relay_queue().enqueue_in(
            datetime.timedelta(seconds=delay + SCHEDULER_SLACK), relay_outbound, outbound_id,
            job_id=f"{outbox.relay_job_id(outbound_id)}-retry{attempt}",
            job_timeout=settings.get()["relay"]["job_timeout"], result_ttl=3600, failure_ttl=86400)
    except Exception as exc:  # Redis trouble: the row knows its due time; the reconciler will act
        log.warning("could not schedule retry of row %s: %s", outbound_id, exc)


def _enqueue(outbound_id):
    try:
        outbox.enqueue_relay(outbound_id)
    except outbox.QueueUnavailable as exc:
        log.warning("could not enqueue row %s, left to the reconciler: %s", outbound_id, exc)


def _event(row, type_, detail, dedupe_key=None):
    try:
        with models.db.atomic():
            models.OutboundEvent.create(outbound=row.id, type=type_, detail=json.dumps(detail),
                                        dedupe_key=dedupe_key)
    except IntegrityError:
        if dedupe_key is None:
            raise  # only a dedupe key may collide; anything else is a real error


def _with_db(function, *args):
    """Run ``function`` in its own connection scope, retrying on a lost connection or a busy
    database. Keeps a recorded SES result from being lost to a database restart."""
    for attempt in range(DB_TRIES):
        try:
            with models.db.connection_context():
                return function(*args)
        except (OperationalError, InterfaceError) as exc:
            if attempt == DB_TRIES - 1:
                raise
            log.warning("database error in %s (try %d of %d): %s", function.__name__, attempt + 1, DB_TRIES, exc)
            time.sleep(min(0.2 * 2 ** attempt, 3.0))


# -- reconciler -------------------------------------------------------------------------------

def reconcile_stale(now=None):
    """Re-enqueue rows stuck in queued/sending past ``relay.reconcile_after``. Returns how many.

    A row is stuck when its job is neither waiting in the queue nor running on time: the enqueue
    after the commit failed, Redis lost its data, or a worker died holding the lease.
    """
    now = now or models.utcnow()
    cutoff = now - datetime.timedelta(seconds=settings.get()["relay"]["reconcile_after"])
    e = models.OutboundEmail
    with models.db.connection_context():
        stale = [(row.id, row.status) for row in e.select(e.id, e.status).where(
            e.status.in_(ACTIVE),
            (e.next_attempt_at.is_null() & (e.updated_at < cutoff)) | (e.next_attempt_at < cutoff),
        ).order_by(e.id).limit(RECONCILE_BATCH)]
    requeued = [outbound_id for outbound_id, status in stale if not _job_alive(outbound_id, status)]
    for outbound_id in requeued:
        outbox.enqueue_relay(outbound_id)
    if requeued:
        log.warning("reconciler re-enqueued %d stuck row(s): %s", len(requeued), requeued[:20])
    # RQ's own bookkeeping: jobs of dead workers leave 'started' for the failed registry.
    StartedJobRegistry(outbox.relay_queue_name(), connection=outbox.connection()).cleanup()
    return len(requeued)


def _job_alive(outbound_id, status):
    """True when the row's job still waits in the queue (a backlog, not a loss), or a live worker
    has taken it and not claimed the row yet.

    A 'started' job on a 'sending' row whose lease expired is a dead worker's: not alive. On a
    'queued' row it is alive only while the worker RQ gave it to still beats (its liveness key
    lapses one lease after a SIGKILL); RQ itself would hold a dead SimpleWorker's job 'started'
    for the whole job timeout."""
    job_id = outbox.relay_job_id(outbound_id)
    try:
        job = Job.fetch(job_id, connection=outbox.connection())
    except NoSuchJobError:
        return False
    job_status = job.get_status()
    if job_status == JobStatus.STARTED:
        return status == "queued" and outbox.worker_alive(job.worker_name)
    if job_status != JobStatus.QUEUED:
        return False
    return outbox.connection().lpos(outbox.relay_queue().key, job_id) is not None
