"""RQ jobs of the relay: ``relay_outbound(id)`` and the periodic ``reconcile_stale()``.

Orchestration only: the row's transitions (claim, record_sent, retry, fail with its quota
give-back, release) are core/outbound.py's, each a conditional UPDATE; this module calls them, the
SES transport, and the queue. The database is the truth; Redis only carries hints ("look at row
N"). A job may run twice, late, or never; the row decides what happens:

- A worker *claims* a row (``outbound.claim``) before it calls SES. Two workers can never both
  hold a row. While the attempt runs, one thread of the process renews the leases
  (``relay.lease``), so only a dead worker's lease lapses.
- The result is recorded only while the claim is still ours (same attempt number).
- Between retries the row stays ``sending`` with ``next_attempt_at`` = when the retry is due, so
  users see one final outcome and a list of attempts, not a stream of soft failures.
- ``reconcile_stale`` re-enqueues rows whose lease or retry time passed ``relay.reconcile_after``
  ago without progress (enqueue lost, Redis flushed, worker SIGKILLed before or after its claim).

Concurrency: the worker runs up to ``relay.concurrency`` of these jobs at once, each on its own
thread (see worker.py). Two process-wide brakes apply inside a job, after its claim: the bytes in
flight (``INFLIGHT``, capped at ``relay.max_inflight_bytes``) and the cluster-wide SES rate
(``core.ses_rate.GOVERNOR``), which each SES call waits for and which an SES throttling answer slows.
Waiting for either is before the SES call, so a SIGTERM meanwhile releases the row.

At-least-once window: if SES accepted a message and the worker died before recording it, the row
still ends with an ``attempt`` event and no result. The next claim sees that, records a
``possible_duplicate`` event and sends again. See docs/relay.md.
"""
import contextlib
import datetime
import json
import logging
import math
import os
import random
import socket
import threading
import time

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
from core import outbound
from core import outbox
from core import ses_events
from core import ses_rate
from core import simulator
from smtpd_worker import transport

log = logging.getLogger(__name__)

DB_TRIES = 6  # a job rides out a database restart of a few seconds instead of failing
RECONCILE_BATCH = 500  # rows per reconciler pass
SCHEDULER_SLACK = 1  # seconds added to a retry's scheduled time (see _schedule)
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"

# Set by the worker on SIGTERM: a job that has not called SES yet hands its row back.
SHUTDOWN = threading.Event()


# -- relay ------------------------------------------------------------------------------------

def relay_outbound(outbound_id):
    """Relay one OutboundEmail through SES. Safe to run any number of times."""
    claim = _with_db(_claim, outbound_id)
    if claim is None:
        return "skipped"
    if simulator.all_simulated(json.loads(claim.row.recipients)):
        ses_id = _with_db(ses_events.apply_simulated, claim)  # never reaches SES (core/simulator.py)
        log.info("simulated %s as %s", claim.row.public_id, ses_id, extra={"outbound_id": claim.row.public_id})
        return "simulated"
    with LEASES.holding(claim):  # let go before any result is written: those set next_attempt_at
        result = _attempt(claim)
    row = claim.row
    extra = {"outbound_id": row.public_id}
    if result is _RELEASE:
        _with_db(outbound.release, claim, "worker shutting down before calling SES")
        _enqueue(row.id)
        log.info("released %s: worker shutting down", row.public_id, extra=extra)
        return "released"
    if isinstance(result, transport.RelayError):
        return _finish_error(claim, result)
    _with_db(outbound.record_sent, claim, result)
    metrics.RELAY_ATTEMPTS.labels(outcome="sent").inc()
    metrics.STATUS_CHANGES.labels(status=outbound.SENT).inc()
    log.info("sent %s as SES %s (attempt %d)", row.public_id, result, claim.attempt, extra=extra)
    return "sent"


_RELEASE = object()


def _attempt(claim):
    """The SES calls of one claimed attempt: the first batch's SES MessageId, a RelayError, or
    _RELEASE when the worker is shutting down before anything was sent."""
    if not INFLIGHT.acquire(claim.size, SHUTDOWN):
        return _RELEASE
    try:
        return _send_batches(claim)
    finally:
        INFLIGHT.release(claim.size)


def _send_batches(claim):
    row = claim.row
    try:
        data = _read_message(claim.blob_key)
    except blobs.BlobError as exc:
        return transport.RelayError("BlobUnavailable", str(exc), retryable=True)
    if SHUTDOWN.is_set():
        return _RELEASE
    batches = transport.recipient_batches(json.loads(row.recipients), data)
    done = dict(claim.batches_done)
    sent_now = False
    for index, batch in enumerate(batches):
        if index in done:
            continue  # SES accepted this batch in an earlier attempt
        if not _wait_for_rate(stop=None if sent_now else SHUTDOWN):
            return _RELEASE
        try:
            done[index] = transport.send_raw(row.mail_from, batch, data, tags={"outbound_id": row.public_id})
        except transport.RelayError as err:
            if err.code in ses_rate.THROTTLE_CODES:
                ses_rate.GOVERNOR.throttled()  # the whole cluster slows, not just this job
            return err
        sent_now = True
        if len(batches) > 1:
            _with_db(outbound.record_batch, claim, index, len(batches), done[index])
    return done[0]


def _wait_for_rate(stop):
    """Wait for this call's slot in the cluster-wide SES schedule. False when ``stop`` was set
    meanwhile (the SES call has not been made: the caller hands the row back)."""
    delay = ses_rate.GOVERNOR.reserve()
    if delay <= 0:
        return True
    if stop is None:
        time.sleep(delay)
        return True
    return not stop.wait(delay)


class InflightBytes:
    """The bytes of messages this process holds for SES calls, capped at
    ``relay.max_inflight_bytes``: a job waits for room before it reads its message. A message
    bigger than the cap runs alone (it waits until nothing else is in flight)."""

    def __init__(self):
        self.used = 0
        self.cond = threading.Condition()

    def acquire(self, size, stop):
        """Take ``size`` bytes; False (nothing taken) if ``stop`` is set while waiting."""
        cap = settings.current().relay.max_inflight_bytes
        with self.cond:
            while self.used and self.used + size > cap:
                if stop.is_set():
                    return False
                self.cond.wait(0.5)
            self.used += size
            return True

    def release(self, size):
        with self.cond:
            self.used -= size
            self.cond.notify_all()


INFLIGHT = InflightBytes()


class Leases(threading.Thread):
    """Renews the lease of every claim this process holds, every third of ``relay.lease``, so a live
    worker keeps its rows however long SES takes, and a dead one (SIGKILL, lost machine) frees them
    within one lease instead of one job timeout. One thread for the process (a thread per job cost
    a start, a wake-up and a join for every message); ``holding(claim)`` puts a claim in its care
    for the attempt and takes it out, waiting for a renewal of it under way, before any result is
    written (results set ``next_attempt_at`` themselves)."""

    TICK = 0.25  # seconds between looks for a due renewal

    class Held:
        def __init__(self, claim, lease):
            self.claim, self.lease = claim, lease
            self.due = time.monotonic() + lease / 3
            self.lock = threading.Lock()  # held while this claim is renewed
            self.done = False  # its attempt ended: never renew it again

    def __init__(self):
        super().__init__(name="leases", daemon=True)
        self.held = {}  # row id -> Held
        self.lock = threading.Lock()  # guards ``held`` (never held across a database call)
        self.started = False

    @contextlib.contextmanager
    def holding(self, claim):
        held = self.Held(claim, settings.current().relay.lease)
        with self.lock:
            self.held[claim.row.id] = held
            if not self.started:
                self.started = True
                self.start()
        try:
            yield
        finally:
            with self.lock:
                self.held.pop(claim.row.id, None)
            with held.lock:  # waits for a renewal under way: it could overwrite the result's next_attempt_at
                held.done = True

    def run(self):
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self.lock:
                due = [held for held in self.held.values() if held.due <= now]
            for held in due:
                with held.lock:
                    if held.done:
                        continue
                    held.due = time.monotonic() + held.lease / 3
                    if not self._renew(held.claim, held.lease):
                        held.done = True  # the row moved on (an SES event settled it): nothing left to hold

    @staticmethod
    def _renew(claim, lease):
        try:
            return _with_db(outbound.renew_lease, claim, lease)
        except Exception as exc:  # the database is down: the lease may lapse; the claim check guards results
            log.warning("could not renew the lease of row %s: %s", claim.row.id, exc)
            return True


LEASES = Leases()


def _read_message(blob_key):
    if blob_key is None:
        raise blobs.BlobError("the Sent copy was deleted before the message was relayed")
    with blobs.store().open(blob_key) as stream:
        return transport.strip_for_relay(stream)


def _claim(outbound_id):
    relay = settings.current().relay
    return outbound.claim(outbound_id, relay.lease, relay.max_attempts, WORKER_NAME)


def _finish_error(claim, err):
    """Record a failed attempt: schedule a retry, or fail the row for good."""
    delay = _with_db(_record_error, claim, err)
    extra = {"outbound_id": claim.row.public_id}
    if delay is None:
        metrics.RELAY_ATTEMPTS.labels(outcome="failed").inc()
        metrics.STATUS_CHANGES.labels(status=outbound.FAILED).inc()
        log.warning("failed %s: %s", claim.row.public_id, err, extra=extra)
        return "failed"
    metrics.RELAY_ATTEMPTS.labels(outcome="retry").inc()
    log.info("retrying %s in %d s: %s", claim.row.public_id, delay, err, extra=extra)
    _schedule(claim.row.id, claim.attempt, delay)
    return "retry"


def _record_error(claim, err):
    """Schedule a retry (its delay in seconds), or fail the row for good (None). None too when the
    claim is no longer ours."""
    max_attempts = settings.current().relay.max_attempts
    if err.retryable and claim.attempt < max_attempts:
        delay = backoff_delay(claim.attempt)
        return delay if outbound.retry(claim, str(err), err.as_detail(), delay) else None
    reason = str(err) if not err.retryable else f"gave up after {claim.attempt} attempts: {err}"
    outbound.fail(claim, reason, err.as_detail())
    return None


def backoff_delay(attempt):
    """Seconds before retry after ``attempt``: base * 2**(attempt-1), capped, jittered into its
    upper half so that a throttled burst does not come back in lockstep."""
    relay = settings.current().relay
    ceiling = min(relay.backoff_max, relay.backoff_base * 2 ** (attempt - 1))
    return max(1, math.ceil(ceiling * random.uniform(0.5, 1.0)))


def _schedule(outbound_id, attempt, delay):
    """Enqueue the retry at its due time (RQ scheduler in the workers); the reconciler is the backstop."""
    try:
        # RQ's scheduler keeps whole-second scores and may fire up to a second early; a job that
        # arrives before next_attempt_at finds the row not due and does nothing, so aim late.
        outbox.relay_queue().enqueue_in(
            datetime.timedelta(seconds=delay + SCHEDULER_SLACK), relay_outbound, outbound_id,
            job_id=f"{outbox.relay_job_id(outbound_id)}-retry{attempt}",
            job_timeout=settings.current().relay.job_timeout, result_ttl=3600, failure_ttl=86400)
    except Exception as exc:  # Redis trouble: the row knows its due time; the reconciler will act
        log.warning("could not schedule retry of row %s: %s", outbound_id, exc)


def _enqueue(outbound_id):
    try:
        outbox.enqueue_relay(outbound_id)
    except outbox.QueueUnavailable as exc:
        log.warning("could not enqueue row %s, left to the reconciler: %s", outbound_id, exc)


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
    cutoff = now - datetime.timedelta(seconds=settings.current().relay.reconcile_after)
    with models.db.connection_context():
        stale = outbound.stale(cutoff, RECONCILE_BATCH)
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
        return status == outbound.QUEUED and outbox.worker_alive(job.worker_name)
    if job_status != JobStatus.QUEUED:
        return False
    return outbox.connection().lpos(outbox.relay_queue().key, job_id) is not None
