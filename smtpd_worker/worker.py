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
import logging

from rq import SimpleWorker

import runtime
from smtpd_worker import jobs
from smtpd_worker import periodic
from smtpd_worker import queue

log = logging.getLogger(__name__)


class RelayWorker(SimpleWorker):
    def request_stop(self, signum, frame):
        jobs.SHUTDOWN.set()
        super().request_stop(signum, frame)


def main(config, burst=False):
    config = runtime.configure(config)
    runtime.setup_logging(config)
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
