"""Readiness checks shared by `GET /readyz` and `inboxlayer health`: database, Redis, SES."""
import functools
import time

import models
from core import outbox
from core import ses


def check_database():
    with models.db.connection_context():
        models.db.execute_sql("SELECT 1")
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


def run_all(config):
    """{name: (ok, detail)}; never raises: a failed check reports its error."""
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
