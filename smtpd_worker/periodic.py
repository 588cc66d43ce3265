"""Periodic tasks run by every worker process; a Redis lock makes each run once per interval
across all workers on all machines.

Adding a task is one line in ``tasks()``: (interval in seconds, name, callable). Each task runs on
its own thread, so a slow one (domain checks waiting on a silent nameserver) never delays another
(the reconciler that recovers stuck mail).
"""
import importlib
import logging
import threading
import time

import redis

from core import outbox

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between looks at the schedule


def tasks(config):
    relay = config["relay"]
    return [
        (relay["reconcile_interval"], "smtpd_worker.jobs:reconcile_stale"),
        (config["dns"]["check_interval"], "core.domains:check_domains"),
        (config["blobs"]["sweep_interval"], "smtpd_worker.sweeper:sweep_orphan_blobs"),
        (config["webhooks"]["dispatch_interval"], "core.webhooks:dispatch_due"),
        (config["events"]["prune_interval"], "core.events:prune"),
        (config["audit"]["prune_interval"], "core.audit:prune"),
    ]


def resolve(path):
    module_name, _, function_name = path.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_due(schedule, now=None):
    """Run each task whose interval has elapsed and whose cluster-wide lock we win.

    ``schedule`` is a list of [interval, path, next_run]; returns the paths that ran here.
    """
    now = time.monotonic() if now is None else now
    ran = []
    for entry in schedule:
        interval, path, next_run = entry
        if now < next_run:
            continue
        entry[2] = now + interval
        if not _take_lock(path, interval):
            continue  # another worker ran it within this interval
        try:
            resolve(path)()
            ran.append(path)
        except Exception:  # the loop's top-level boundary: log it, keep the other tasks alive
            log.exception("periodic task %s failed", path)
    return ran


def _take_lock(path, interval):
    """SET NX with an expiry of one interval: whoever sets it runs the task this interval."""
    try:
        return bool(outbox.connection().set(outbox.key("periodic", path), "1", nx=True,
                                           px=max(1, int(interval * 1000 * 0.9))))
    except redis.RedisError as exc:
        log.warning("periodic lock for %s unavailable: %s", path, exc)
        return False


class PeriodicRunner:
    """One daemon thread per task beside the RQ worker's job loop.

    ``schedule`` holds every task's entry (``run_due(runner.schedule)`` runs one pass of all of
    them, as ``worker --burst`` does); ``start()`` gives each entry a thread of its own.
    """

    def __init__(self, config):
        self.schedule = [[interval, path, 0.0] for interval, path in tasks(config)]
        self.stopping = threading.Event()
        self.threads = []

    def start(self):
        for entry in self.schedule:
            thread = threading.Thread(target=self._run, args=(entry,), name=f"periodic {entry[1]}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, entry):
        while not self.stopping.is_set():
            run_due([entry])
            self.stopping.wait(TICK)

    def stop(self):
        self.stopping.set()
