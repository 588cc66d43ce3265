"""The ONE place that builds SES v2 clients, with a timeout and retry policy per purpose.

- ``relay``: the SendEmail call (smtpd_worker.transport). ``ses.connect_timeout`` and
  ``ses.read_timeout``, botocore's standard retries up to ``ses.max_attempts_per_call``; each
  client has its own boto3 session (the worker builds clients from several threads).
- ``domains``: identity calls (core.domains). ``ses.connect_timeout``, a 10 s read timeout, two
  attempts (standard mode).
- ``account``: GetAccount for the send-rate governor (core.ses_rate). 3 s to connect, 5 s to
  read, one attempt: the governor steps aside when SES cannot say.
- ``health``: the readiness probe (core.health). 3 s to connect, 5 s to read, one attempt: a
  probe answers now or reports the failure.

Credentials: ``ses.endpoint_url`` empty means real AWS and the standard credential chain.
"""
import boto3
from botocore.config import Config

DOMAINS_READ_TIMEOUT = 10  # seconds per SES identity call


def _relay(ses):
    return Config(connect_timeout=ses["connect_timeout"], read_timeout=ses["read_timeout"],
                  retries={"total_max_attempts": max(1, ses["max_attempts_per_call"]), "mode": "standard"})


def _domains(ses):
    return Config(connect_timeout=ses["connect_timeout"], read_timeout=DOMAINS_READ_TIMEOUT,
                  retries={"total_max_attempts": 2, "mode": "standard"})


def _health(ses):
    return Config(connect_timeout=3, read_timeout=5, retries={"total_max_attempts": 1})


POLICIES = {"relay": _relay, "domains": _domains, "health": _health, "account": _health}


def policy(purpose, ses):
    """The botocore Config for ``purpose`` under the ``[ses]`` settings ``ses``."""
    return POLICIES[purpose](ses)


def new_client(purpose, ses, max_pool_connections=None):
    """A new SES v2 client for ``purpose`` ("relay", "domains", "account" or "health") under the ``[ses]``
    settings ``ses``. Building one costs tens of ms of CPU: callers that call often keep theirs.
    ``max_pool_connections``: HTTP connections the client keeps open (botocore's default is 10; a
    client shared by more threads than that opens, and for real SES TLS-handshakes, a new
    connection for every call beyond it and throws it away after)."""
    # The relay builds its client in worker threads; boto3's default session is not safe for
    # that, so it gets a session of its own. The others keep the default session, as before.
    factory = boto3.session.Session().client if purpose in ("relay", "account") else boto3.client
    config = policy(purpose, ses)
    if max_pool_connections:
        config = config.merge(Config(max_pool_connections=max_pool_connections))
    return factory("sesv2", region_name=ses["region"], endpoint_url=ses["endpoint_url"] or None, config=config)
