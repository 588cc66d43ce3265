"""Readiness checks shared by `GET /readyz` and `inboxlayer health` (database, Redis, SES), and the
IMAP process's `/readyz` (imapd/health.py: database, blob store)."""
import functools
import threading
import time

import models
from core import blobs
from core import metrics
from core import outbox
from core import ses

# How long the public /readyz answer is reused. Anyone may call it, and each run costs a database
# and a Redis round trip and an SES API call on the account every tenant shares: without a bound a
# client polling /readyz in a loop would spend that account's SES API rate.
SHARED_MAX_AGE = 2.0  # seconds
_shared_lock = threading.Lock()
_shared = {}  # (region, endpoint, database, redis) -> (monotonic time, results)


def check_database():
    with models.db.connection_context():
        models.db.execute_sql("SELECT 1")
    return "reachable"


def check_blobs():
    """The blob store answers (the IMAP process's readiness: it serves stored messages)."""
    blobs.store().check()
    return "reachable"


def check_redis():
    outbox.connection().ping()
    return "reachable"


@functools.lru_cache(maxsize=4)
def _ses_client(region, endpoint_url):
    # Building a boto3 client costs tens of ms of CPU; orchestrators poll /readyz every few seconds.
    return ses.new_client("health", {"region": region, "endpoint_url": endpoint_url})


def check_ses(config):
    _ses_client(config["ses"]["region"], config["ses"]["endpoint_url"]).list_email_identities(PageSize=1)
    return config["ses"]["endpoint_url"] or f"AWS {config['ses']['region']}"


def run_all_shared(config, max_age=SHARED_MAX_AGE):
    """run_all(config), reused for ``max_age`` seconds: at most one run per interval per process,
    however many callers ask at once (they wait for the run in progress and share it)."""
    key = (config["ses"]["region"], config["ses"]["endpoint_url"], repr(config["database"]), repr(config["redis"]))
    with _shared_lock:
        ran_at, results = _shared.get(key, (None, None))
        if ran_at is None or time.monotonic() - ran_at >= max_age:
            results = run_all(config)
            _shared.clear()  # one configuration is live per process; drop what an older one left
            _shared[key] = (time.monotonic(), results)
        return results


def run_all(config):
    """{name: (ok, detail)}; never raises: a failed check reports its error."""
    metrics.READINESS_RUNS.inc()
    results = {}
    for name, check in (("database", check_database), ("redis", check_redis),
                        ("ses", lambda: check_ses(config))):
        started = time.monotonic()
        try:
            detail = check()
            results[name] = (True, f"{detail} ({(time.monotonic() - started) * 1000:.0f} ms)")
        except Exception as exc:  # a health check reports failures, whatever they are
            results[name] = (False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return results
