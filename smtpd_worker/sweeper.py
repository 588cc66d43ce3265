"""Delete orphan blobs: message files that no Message row refers to.

A submit writes the blob before its transaction; if the commit then fails, or its outcome is
unknown, or the process dies in between, the file stays behind with no row. Such files are only
ever written at submit time, so the sweeper looks at the day folders of the last few days
(blob keys start with the UTC date), and deletes a blob only when it is older than
``blobs.orphan_after`` (far longer than any submit takes) and no row names it.
"""
import datetime
import logging
import time

import models
import settings
from core import blobs

log = logging.getLogger(__name__)

DAYS = 3  # today and the two days before: a sweep a day is enough to see every orphan
BATCH = 500  # keys per database lookup


def day_prefixes(today, days=DAYS):
    return [f"{today - datetime.timedelta(days=n):%Y/%m/%d}/" for n in range(days)]


def sweep_orphan_blobs(now=None):
    """Delete unreferenced blobs older than ``blobs.orphan_after``; returns the keys deleted."""
    now = time.time() if now is None else now
    cutoff = now - settings.current().blobs.orphan_after
    store = blobs.store()
    today = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()
    candidates = [key for prefix in day_prefixes(today) for key, modified in store.list(prefix) if modified < cutoff]
    deleted = []
    for start in range(0, len(candidates), BATCH):
        batch = candidates[start:start + BATCH]
        for key in set(batch) - _referenced(batch):
            try:
                store.delete(key)
            except blobs.BlobError as exc:
                log.warning("could not delete orphan blob %s: %s", key, exc)
                continue
            deleted.append(key)
    if deleted:
        log.info("deleted %d orphan blob(s): %s", len(deleted), deleted[:20])
    return deleted


def _referenced(keys):
    m = models.Message
    with models.db.connection_context():
        return {row.blob_key for row in m.select(m.blob_key).where(m.blob_key.in_(keys))}
