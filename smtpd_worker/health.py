"""Readiness checks shared by `GET /readyz` and `inboxlayer health`: database, Redis, SES."""
import time

import models
from smtpd_worker import queue


def check_database():
    with models.db.connection_context():
        models.db.execute_sql("SELECT 1")
    return "reachable"


def check_redis():
    queue.connection().ping()
    return "reachable"


def check_ses(config):
    import boto3
    from botocore.config import Config

    client = boto3.client("sesv2", region_name=config["ses"]["region"],
                          endpoint_url=config["ses"]["endpoint_url"] or None,
                          config=Config(connect_timeout=3, read_timeout=5, retries={"total_max_attempts": 1}))
    client.list_email_identities(PageSize=1)
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
