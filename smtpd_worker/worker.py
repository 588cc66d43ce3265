"""`inboxlayer worker`: an RQ worker on the relay queue plus the periodic tasks.

RQ's ``SimpleWorker`` (no fork: the boto3 client, the database pool and the SIGTERM handling stay
in one process we control) that runs up to ``relay.concurrency`` jobs at once, each on a thread
of a bounded pool: the main thread takes a free slot, dequeues a job, does RQ's bookkeeping
(``prepare_execution``) and hands the job to the pool; RQ 3 keeps one Execution per running job,
so several at once is its own model. An SES call spends its time waiting on the network, so
threads are enough (boto3 clients are thread-safe; each thread takes its own pooled database
connection per transaction). Job timeouts raise RQ's ``JobTimeoutException`` in the job's thread
(as RQ's ``TimerDeathPenalty`` does; SIGALRM reaches only the main thread), from one watchdog
thread for the process (``WatchdogDeathPenalty``). Any job kind on the queue runs the same way.
Retries are scheduled with ``enqueue_in`` and moved to the queue by RQ's scheduler, which one
worker per queue runs (``with_scheduler=True``; the others wait for its lock).

SIGTERM (a deploy; SIGKILL follows ~30 s later): the worker stops taking jobs; a job that has not
called SES yet (including one waiting for the rate governor or for room under
``relay.max_inflight_bytes``) hands its row back and re-enqueues it, a job inside the SES call
finishes and records the result; the worker exits once the pool is empty. If SIGKILL still lands
mid-job, each row's lease expires (or, before a row was claimed, this worker's liveness key does)
and the reconciler re-enqueues it.
"""
import ctypes
import ctypes.util
import heapq
import itertools
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from rq import SimpleWorker
from rq.worker import WorkerStatus
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import JobStatus
from rq.rate_limit import release_slot
from rq.timeouts import TimerDeathPenalty
from rq.utils import now as utcnow

import models
import runtime
import settings
from smtpd_worker import jobs
from core import metrics
from smtpd_worker import periodic
from smtpd_worker import transport
from core import outbox

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0005  # seconds; see main()
HEARTBEAT_EVERY = 5  # seconds between the worker's own RQ heartbeats (its key lives 480 s)


class Watchdog(threading.Thread):
    """One thread that enforces the job timeouts of every job of the process. RQ's
    ``TimerDeathPenalty`` starts (and cancels) a ``threading.Timer`` thread for every job."""

    def __init__(self):
        super().__init__(name="job-timeouts", daemon=True)
        self.cond = threading.Condition()
        self.heap = []  # (deadline, sequence, penalty); cancelled ones are dropped lazily
        self.sequence = itertools.count()
        self.started = False
        self.armed = 0  # penalties armed now

    def arm(self, penalty, timeout):
        with self.cond:
            penalty.armed = True
            self.armed += 1
            heapq.heappush(self.heap, (time.monotonic() + timeout, next(self.sequence), penalty))
            if not self.started:
                self.started = True
                self.start()
            elif self.heap[0][2] is penalty:
                self.cond.notify()

    def disarm(self, penalty):
        with self.cond:  # after this, the penalty can no longer fire
            if not penalty.armed:
                return  # it fired already
            penalty.armed = False
            self.armed -= 1
            if len(self.heap) > 2 * self.armed + 64:  # drop the cancelled ones (most of them)
                self.heap = [entry for entry in self.heap if entry[2].armed]
                heapq.heapify(self.heap)

    def run(self):
        with self.cond:
            while True:
                while self.heap and not self.heap[0][2].armed:
                    heapq.heappop(self.heap)
                if not self.heap:
                    self.cond.wait()
                    continue
                deadline, _, penalty = self.heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self.cond.wait(wait)
                    continue
                heapq.heappop(self.heap)
                penalty.armed = False
                self.armed -= 1
                try:
                    penalty.handle_death_penalty()  # the job's thread raises JobTimeoutException
                except Exception:
                    log.exception("could not stop a job past its timeout")


WATCHDOG = Watchdog()


class WatchdogDeathPenalty(TimerDeathPenalty):
    """RQ's TimerDeathPenalty (an exception raised in the job's thread once its timeout passes),
    with the process's one Watchdog thread instead of a timer thread per job."""

    armed = False

    def setup_death_penalty(self):
        if self._timeout > 0:
            WATCHDOG.arm(self, self._timeout)

    def cancel_death_penalty(self):
        if self._timeout > 0:
            WATCHDOG.disarm(self)


class RelayWorker(SimpleWorker):
    """RQ's SimpleWorker with up to ``concurrency`` jobs in flight on a thread pool, our own
    liveness beat (see Liveness) and the SIGTERM hand-back."""

    liveness = None
    # RQ doubles its wait after each failed Redis call up to 60 s, so after an outage of half a
    # minute a worker could sit idle for another minute with Redis back and mail waiting. Retrying
    # a local Redis every few seconds costs nothing.
    max_connection_wait_time = 5.0
    death_penalty_class = WatchdogDeathPenalty  # jobs run on pool threads; SIGALRM would hit the main thread

    def __init__(self, *args, concurrency=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.concurrency = concurrency or settings.current().relay.concurrency
        self.slots = threading.BoundedSemaphore(self.concurrency)
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="relay")
        self.dispatching = False  # the main thread is between dequeue and hand-off: do not interrupt it
        self.tearing_down = False  # the main thread waits for the pool to empty: do not interrupt it
        self.running, self.running_lock = 0, threading.Lock()  # jobs the pool is running now
        # Webhook deliveries may hold at most this many slots at once, so receivers that hang (each up
        # to core.webhooks.TOTAL_TIMEOUT) never take every slot from mail.
        self.webhook_slots = max(1, int(self.concurrency * WEBHOOK_SHARE))
        self.webhooks_running = 0
        self.suspension_checked = float("-inf")

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """Wait for a free slot, then dequeue as RQ does. The slot goes with the job (released by
        ``_run``), or back at once when nothing was dequeued."""
        while not self.slots.acquire(timeout=1):
            self.heartbeat()  # a long wait for a slot must not let RQ think this worker died
        try:
            result = self._dequeue(timeout, max_idle_time)
        except BaseException:
            self.slots.release()
            raise
        if result is None:
            self.slots.release()
        return result

    def _dequeue(self, timeout, max_idle_time):
        """RQ's dequeue from every queue, or, while deliveries hold their share of the slots, from
        the others only, looking again each second (a burst run takes whatever is there)."""
        hooks = outbox.webhook_queue_name()
        while True:
            with self.running_lock:
                full = self.webhooks_running >= self.webhook_slots
            if not full or timeout is None:
                self._ordered_queues = list(self.queues)
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            self._ordered_queues = [q for q in self.queues if q.name != hooks]
            try:
                result = super().dequeue_job_and_maintain_ttl(1, 1)
            finally:
                self._ordered_queues = list(self.queues)
            if result is not None:
                return result

    def execute_job(self, job, queue):
        """Hand the job to the pool; RQ's per-job bookkeeping (its Execution, 'started') runs on
        the pool thread too, so the main thread's only Redis work per job is the dequeue."""
        self.dispatching = True
        hook = queue.name == outbox.webhook_queue_name()
        if hook:
            with self.running_lock:
                self.webhooks_running += 1
        try:
            self.pool.submit(self._run, job, queue, hook)
        except BaseException:
            if hook:
                with self.running_lock:
                    self.webhooks_running -= 1
            self.slots.release()
            raise
        finally:
            self.dispatching = False

    def _run(self, job, queue, hook=False):
        with self.running_lock:
            self.running += 1
        try:
            execution = self._begin(job)
            self.perform_job(job, queue, execution)  # RQ records success/failure itself
        except Exception:  # the thread's top-level boundary: keep the pool alive
            log.exception("relay worker thread failed around job %s", job.id)
        finally:
            with self.running_lock:
                self.running -= 1
                if hook:
                    self.webhooks_running -= 1
            self.slots.release()

    # -- RQ's per-job bookkeeping in two Redis round trips instead of six -----------------------
    #
    # RQ 3 (pinned <3.1 in pyproject.toml: these mirror its internals) writes a job's start in two
    # transactions (prepare_execution, then prepare_job_execution), its last heartbeat in a third
    # call after the job, and its success after a WATCH and an SMEMBERS of the job's dependents:
    # six round trips and most of the worker's CPU outside the SES call. Here the start is one
    # transaction and the end another, writing the same keys with the same values: the Execution
    # and its registries (the started registry the reconciler cleans), the job's status
    # 'started' with this worker's name (which the reconciler reads with our liveness key), then
    # 'finished', its result, the finished registry and the worker's counters. What is left out
    # is only the dependents step: no job of ours is enqueued with ``depends_on`` (their enqueues
    # are in core/outbox.py and smtpd_worker/jobs.py), so there is never a dependent to release.
    # Failures keep RQ's own path (handle_execution_ended and handle_job_failure).

    def _begin(self, job):
        """prepare_execution + prepare_job_execution in one transaction. Left out: the worker's
        heartbeat with the job's TTL (the main thread beats every HEARTBEAT_EVERY seconds, its key
        living 480 s, while jobs run) and the job's own heartbeat field, which
        ``prepare_for_execution`` writes in the same HSET as 'started'."""
        heartbeat_ttl = self.get_heartbeat_ttl(job)
        with self.connection.pipeline() as pipeline:
            execution = Execution.create(job, heartbeat_ttl, pipeline=pipeline, worker_name=self.name)
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            pipeline.persist(job.key)
            if len(self.queues) == 1:  # as RQ's perform_job: the job may sit in its intermediate queue
                pipeline.lrem(self.queue_class(job.origin, connection=self.connection).intermediate_queue_key, 1, job.id)
            pipeline.execute()
        self.executions[execution.id] = execution
        return execution

    def prepare_job_execution(self, job, remove_from_intermediate_queue=False):
        """Done by ``_begin`` together with the Execution (perform_job calls this)."""

    def handle_execution_ended(self, job, queue, heartbeat_ttl):
        """After a success the job's last heartbeat goes with ``handle_job_success``'s transaction
        (RQ writes it in a round trip of its own); a failure takes RQ's path."""
        if job._status == JobStatus.FAILED:
            return super().handle_execution_ended(job, queue, heartbeat_ttl)
        job.ended_at = utcnow()
        job.last_heartbeat = job.ended_at
        return None

    def handle_job_retry(self, job, queue, retry, started_job_registry, execution):
        job.heartbeat(job.last_heartbeat or utcnow(), 0)  # the write handle_execution_ended left out
        return super().handle_job_retry(job, queue, retry, started_job_registry, execution)

    def handle_job_success(self, job, queue, started_job_registry, execution):
        """RQ's handle_job_success without its dependents step (see above), in one transaction."""
        if job.repeats_left:  # never ours; RQ's own path schedules the repeat
            job.heartbeat(job.last_heartbeat, 0)
            return super().handle_job_success(job, queue, started_job_registry, execution)
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        with self.connection.pipeline() as pipeline:
            if result_ttl == 0:  # otherwise _handle_success saves the job, last_heartbeat included
                job.heartbeat(job.last_heartbeat, 0, pipeline=pipeline)
            self.increment_successful_job_count(pipeline=pipeline)
            self.increment_total_working_time(job.ended_at - job.started_at, pipeline)
            if result_ttl != 0:
                job._handle_success(result_ttl, pipeline=pipeline, worker_name=self.name, execution_id=execution.id,
                                    execution_started_at=execution.created_at, execution_ended_at=job.ended_at)
            job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
            job._status = JobStatus.FINISHED
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.execute()
        release_slot(job)

    def set_state(self, state, pipeline=None):
        """The worker is ``busy`` while any job runs (RQ would write ``idle`` before every dequeue
        and ``busy`` for every job: two Redis writes per job for a flickering display)."""
        if state == WorkerStatus.IDLE and self.running:
            state = WorkerStatus.BUSY
        if state == self._state:
            return
        super().set_state(state, pipeline)

    def check_for_suspension(self, burst):
        """`rq suspend` is honoured within a second (RQ asks Redis before every job)."""
        if time.monotonic() - self.suspension_checked < 1:
            return
        self.suspension_checked = time.monotonic()
        super().check_for_suspension(burst)

    def heartbeat(self, timeout=None, pipeline=None):
        """RQ beats the worker's key (3 round trips) around every dequeue and after every job; with
        many jobs a second that is most of the main thread's work for nothing: the key lives
        ``worker_ttl`` + 60 s (480 s). Plain beats go at most every HEARTBEAT_EVERY seconds; beats
        with a job's timeout or inside RQ's pipelines pass through."""
        if timeout is None and pipeline is None and self.last_heartbeat is not None:
            if (utcnow() - self.last_heartbeat).total_seconds() < HEARTBEAT_EVERY:
                return
        super().heartbeat(timeout, pipeline)

    def in_flight(self):
        """Jobs running on the pool now."""
        return self.concurrency - self.slots._value

    def _shutdown(self):
        """SIGTERM/SIGINT: stop taking jobs at once (the main thread only waits for a slot or a
        job); the pool's jobs finish or hand their rows back, then ``teardown`` lets go."""
        self._stop_requested = True
        self.set_shutdown_requested_date()
        if not (self.dispatching or self.tearing_down):
            raise StopRequested()

    def teardown(self):
        self.tearing_down = True
        self.pool.shutdown(wait=True)  # in-flight jobs end first: results recorded or rows released
        super().teardown()

    def register_birth(self):
        super().register_birth()
        self.liveness = Liveness(self.connection, self.name, settings.current().relay.lease)
        self.liveness.start()

    def register_death(self):
        if self.liveness is not None:
            self.liveness.stop()
        try:
            super().register_death()
        except redis.RedisError as exc:  # our worker hash expires on its own; let teardown go on
            log.warning("could not register the death of worker %s: %s", self.name, exc)

    def request_stop(self, signum, frame):
        jobs.SHUTDOWN.set()
        super().request_stop(signum, frame)


class Liveness(threading.Thread):
    """Keeps ``outbox.worker_liveness_key(name)`` alive: set with an expiry of one ``relay.lease``,
    renewed every third of it, deleted on a clean exit.

    RQ marks a job ``started`` (with this worker's name) before our job function claims its row.
    If the worker dies in between, the row is still ``queued`` and RQ's own heartbeat of a
    SimpleWorker lasts job_timeout + 60 s, so the reconciler asks this key instead: once it has
    lapsed, the started job is a dead worker's and the row is re-enqueued within
    ``lease + reconcile_after + reconcile_interval``. The first beat is written before the worker
    takes any job.
    """

    def __init__(self, connection, worker_name, lease):
        super().__init__(name="liveness", daemon=True)
        self.connection, self.key, self.lease = connection, outbox.worker_liveness_key(worker_name), lease
        self.stopping = threading.Event()
        self.beat()

    def beat(self):
        try:
            self.connection.set(self.key, str(os.getpid()), px=max(1, int(self.lease * 1000)))
        except redis.RedisError as exc:  # the reconciler may re-enqueue our job meanwhile; the claim guards it
            log.warning("could not renew worker liveness %s: %s", self.key, exc)

    def run(self):
        while not self.stopping.wait(self.lease / 3):
            self.beat()

    def stop(self):
        self.stopping.set()
        if self.is_alive():
            self.join()
        try:
            self.connection.delete(self.key)
        except redis.RedisError as exc:
            log.warning("could not delete worker liveness %s: %s", self.key, exc)


WORK_LOOP_RESTART_DELAY = 2.0  # seconds between RQ work loops after one ended on an error

WEBHOOK_SHARE = 0.5  # of a worker's relay.concurrency slots, at most this share deliver webhooks at once

PR_SET_PDEATHSIG = 1  # prctl(2) option: signal sent to this process when its parent dies


def die_with_parent():
    """Make RQ's forked scheduler process exit when this worker dies, even by SIGKILL.

    RQ forks its scheduler from the worker; if the worker is killed hard, the scheduler would live
    on as an orphan holding the scheduler lock, one more per crash. Linux only; elsewhere a no-op.
    """
    parent = os.getpid()

    def in_child():
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(0)

    if hasattr(os, "register_at_fork") and os.uname().sysname == "Linux":
        os.register_at_fork(after_in_child=in_child)


def main(config, burst=False):
    config = runtime.configure(config)
    typed = settings.current()
    if typed.relay.concurrency > typed.database.max_connections:
        # Each job holds a pooled connection only inside a transaction, but a commit under load
        # takes milliseconds: with fewer connections than jobs in flight they queue for the pool.
        models.init_database(typed.database.url, typed.relay.concurrency, prepare=typed.database.prepare_statements)
    runtime.setup_logging(config)
    die_with_parent()
    metrics.start_http_exporter(config["metrics"]["worker_port"], config["metrics"]["host"])
    relay_queue = outbox.relay_queue()
    transport.client()  # built once now (tens of ms of CPU), not by the first job
    # Many threads each doing a little work between network waits: a thread coming back from I/O
    # should not wait CPython's default 5 ms for the GIL (a convoy that serialises the jobs).
    sys.setswitchinterval(SWITCH_INTERVAL)
    # Relay first: a free slot takes from the first queue that has a job, so while mail waits it
    # gets the slots; webhook deliveries (however many are pending) fill slots no mail is waiting
    # for, at most WEBHOOK_SHARE of them (a delivery holds its slot 15 s at most).
    queues = [relay_queue, outbox.webhook_queue()]
    runner = periodic.PeriodicRunner(config)
    if burst:
        periodic.run_due(runner.schedule)  # one pass, so `worker --burst` also recovers stuck rows
    else:
        runner.start()
    try:
        while True:
            worker = RelayWorker(queues, connection=outbox.connection())
            log.info("relay worker %s on queues %s", worker.name, ", ".join(q.name for q in queues))
            try:
                worker.work(burst=burst, with_scheduler=True, logging_level=config["server"]["log_level"].upper())
            except redis.RedisError as exc:
                log.warning("RQ work loop of %s failed on Redis: %s", worker.name, exc)
            if burst or worker._stop_requested or jobs.SHUTDOWN.is_set():
                break
            # RQ ends its work loop on any Redis error raised outside its own dequeue retry (the
            # bookkeeping after a job, the idle-state write, maintenance). A Redis blip must not
            # leave a process that runs the reconciler but takes no jobs: start a new work loop.
            log.warning("RQ work loop of %s ended unexpectedly; starting another in %.0f s",
                        worker.name, WORK_LOOP_RESTART_DELAY)
            if runner.stopping.wait(WORK_LOOP_RESTART_DELAY):
                break
    finally:
        runner.stop()
