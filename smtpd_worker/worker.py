"""`inboxlayer worker`: an RQ worker on the relay queue plus the periodic tasks.

rq 3.x has no gevent worker class, so this is RQ's ``SimpleWorker`` (the job runs in this
process, one at a time; scale with more processes). Not forking keeps the boto3 client, the
database pool and the SIGTERM handling in one process we control. Retries are scheduled with
``enqueue_in`` and moved to the queue by RQ's scheduler, which one worker per queue runs
(``with_scheduler=True``; the others wait for its lock).

SIGTERM (a deploy; SIGKILL follows ~30 s later): RQ stops taking jobs; a job that has not called
SES yet hands its row back and re-enqueues it, a job inside the SES call finishes and records the
result. If SIGKILL still lands mid-job, the row's lease expires and the reconciler re-enqueues it.
"""
import ctypes
import ctypes.util
import logging
import os
import signal

from rq import SimpleWorker

import runtime
from smtpd_worker import jobs
from smtpd_worker import metrics
from smtpd_worker import periodic
from smtpd_worker import queue

log = logging.getLogger(__name__)


class RelayWorker(SimpleWorker):
    def request_stop(self, signum, frame):
        jobs.SHUTDOWN.set()
        super().request_stop(signum, frame)


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
    runtime.setup_logging(config)
    die_with_parent()
    metrics.start_http_exporter(config["metrics"]["worker_port"], config["metrics"]["host"])
    relay_queue = queue.relay_queue()
    worker = RelayWorker([relay_queue], connection=queue.connection())
    runner = periodic.PeriodicRunner(config)
    if burst:
        periodic.run_due(runner.schedule)  # one pass, so `worker --burst` also recovers stuck rows
    else:
        runner.start()
    log.info("relay worker %s on queue %s", worker.name, relay_queue.name)
    try:
        worker.work(burst=burst, with_scheduler=True, logging_level=config["server"]["log_level"].upper())
    finally:
        runner.stop()
