"""Group commit: work items that arrive at the same moment share one run of ``commit_batch``.

Leader/follower, no committer thread and no timer. A caller hands its item to ``Batcher.run``:
when nobody is committing, it becomes the leader at once and commits what is waiting (its own
item, maybe alone: a lone item never waits for company). While a leader commits, later callers
queue up and block; when the leader is done it wakes its batch and hands the lead to the first
caller still queued, which commits everything that queued meanwhile as the next batch. So under
load the batches grow by themselves, and at rest every item is a batch of one.

Works with threads and, under gevent's monkey-patching, with greenlets (threading's Lock and
Event are then gevent's). ``commit_batch(items)`` runs in the leader's thread/greenlet and must
give every item its outcome (``item.result`` / ``item.error``); if it raises, every item of the
batch gets that exception instead, whatever it had been given.
"""
import threading

from core import metrics


class Interrupted(Exception):
    """The leader stopped in the middle of a batch: the outcome of its items is unknown."""


class Item:
    """One caller's unit of work; ``commit_batch`` sets ``result`` or ``error``."""

    __slots__ = ("payload", "result", "error", "_done", "_event", "_lead")

    def __init__(self, payload):
        self.payload = payload
        self.result = self.error = None
        self._done = False
        self._event = threading.Event()
        self._lead = False


class Batcher:
    def __init__(self, commit_batch, max_batch=64, name="submit"):
        self.commit_batch, self.max_batch, self.name = commit_batch, max_batch, name
        self._lock = threading.Lock()
        self._queue = []  # items not yet in a batch, in arrival order
        self._leading = False  # a leader is committing; invariant: not leading => queue empty

    def waiting(self):
        """Items queued behind the batch being committed (tests and metrics read it)."""
        return len(self._queue)

    def run(self, payload):
        """Commit ``payload`` with whatever is ready; returns the Item once its batch is done."""
        item = Item(payload)
        with self._lock:
            self._queue.append(item)
            lead = not self._leading
            self._leading = True
        if not lead:
            try:
                item._event.wait()
            except BaseException:  # the caller is being stopped (a killed greenlet) while it waits
                self._abandon(item)
                raise
            if not item._lead:  # committed by a leader
                return item
        self._lead_batch()
        return item

    def _abandon(self, item):
        """``item``'s caller stops waiting. Still queued, the item leaves the queue (nothing of it
        was written); if the lead had been handed to it, the lead passes to the next queued item, so
        the callers behind a dead one are never left waiting for a leader that will not come. Already
        in a batch, it is committed all the same (its caller will not hear of it, as with a
        connection lost after the commit)."""
        with self._lock:
            if item not in self._queue:
                return
            self._queue.remove(item)
            successor = None
            if item._lead:
                successor = self._queue[0] if self._queue else None
                if successor is None:
                    self._leading = False
                else:
                    successor._lead = True
        if successor is not None:
            successor._event.set()

    def _lead_batch(self):
        with self._lock:
            batch, self._queue[:] = self._queue[:self.max_batch], self._queue[self.max_batch:]
        metrics.SUBMIT_BATCH_SIZE.observe(len(batch))
        try:
            self.commit_batch(batch)
        except Exception as exc:  # handed to every item of the batch; its caller raises it
            self._fail(batch, exc)
        except BaseException:  # the leader itself is being stopped (GreenletExit, KeyboardInterrupt)
            self._fail(batch, Interrupted("the batch's commit was interrupted"))
            raise
        finally:
            with self._lock:  # the lead is handed over under the lock, so _abandon sees who holds it
                successor = self._queue[0] if self._queue else None
                if successor is None:
                    self._leading = False
                else:
                    successor._lead = True
            for item in batch:
                item._done = True
                item._event.set()
            if successor is not None:
                successor._event.set()

    @staticmethod
    def _fail(batch, exc):
        """The batch's transaction failed: no item has an outcome but this (callers check for their rows)."""
        for item in batch:
            item.result, item.error = None, exc
