"""Redis and the RQ relay queue: the one place that knows their names."""
import redis
from rq import Queue
from rq.job import Job

import settings
from core.errors import QueueUnavailable

# The relay job, by dotted name: RQ resolves it in the worker, so core never imports the relay
# stack (smtpd_worker.jobs imports this module to re-enqueue; naming it here breaks that cycle).
RELAY_JOB = "smtpd_worker.jobs.relay_outbound"
WEBHOOK_JOB = "smtpd_worker.deliveries.deliver_webhook"  # one webhook delivery (core/webhooks.py)

_redis = None
_prefix = "inboxlayer"


def configure(config: dict) -> redis.Redis:
    global _redis, _prefix
    redis_settings = settings.view(config).redis
    _prefix = redis_settings.prefix
    _redis = redis.Redis.from_url(redis_settings.url, socket_connect_timeout=3, socket_timeout=5,
                                  health_check_interval=30)
    return _redis


def connection():
    if _redis is None:
        raise QueueUnavailable("redis not configured")
    return _redis


def key(*parts):
    """A Redis key under this deployment's prefix."""
    return ":".join((_prefix,) + tuple(str(p) for p in parts))


def relay_queue_name():
    return f"{_prefix}-relay"


def relay_queue():
    return Queue(relay_queue_name(), connection=connection())


def relay_job_id(outbound_id):
    """RQ job id of a row's relay job; carries the prefix so deployments (and test runs) sharing
    one Redis never overwrite each other's jobs."""
    return f"{_prefix}-relay-{outbound_id}"


def worker_liveness_key(worker_name):
    """Redis key a running relay worker keeps alive (see worker.Liveness); it lapses one
    ``relay.lease`` after the worker's last beat, so a SIGKILLed worker is known dead that soon."""
    return key("worker-alive", worker_name)


def worker_alive(worker_name):
    """True while the RQ worker named ``worker_name`` beats. Raises QueueUnavailable if Redis is down."""
    if not worker_name:
        return False
    try:
        return bool(connection().exists(worker_liveness_key(worker_name)))
    except redis.RedisError as exc:
        raise QueueUnavailable(str(exc)) from exc


def enqueue_relay(outbound_id: int) -> Job:
    """Enqueue the relay job for an OutboundEmail. Raises QueueUnavailable if Redis is down.

    The job id is derived from the row, so a second enqueue of a job still waiting is a no-op
    in practice (RQ replaces the job hash) and the reconciler cannot pile up duplicates.
    """
    return enqueue_relays([outbound_id])[0]


def enqueue_relays(outbound_ids) -> list:
    """enqueue_relay for several rows in one pipelined Redis round trip (a group commit's batch).
    Raises QueueUnavailable if Redis is down."""
    queue = relay_queue()
    timeout = settings.current().relay.job_timeout
    try:
        return queue.enqueue_many([
            Queue.prepare_data(RELAY_JOB, (outbound_id,), job_id=relay_job_id(outbound_id), timeout=timeout,
                               result_ttl=3600, failure_ttl=86400)
            for outbound_id in dict.fromkeys(outbound_ids)])
    except redis.RedisError as exc:
        raise QueueUnavailable(str(exc)) from exc



def webhook_queue_name():
    return f"{_prefix}-webhooks"


def webhook_queue():
    """The queue of webhook deliveries. Workers listen to it after the relay queue, so a backlog
    of deliveries never stands in front of mail."""
    return Queue(webhook_queue_name(), connection=connection())


def enqueue_webhook(delivery_id: int) -> Job:
    """Enqueue one webhook delivery attempt. Raises QueueUnavailable if Redis is down. A duplicate
    is harmless: the delivery row is claimed before anything is sent."""
    try:
        return webhook_queue().enqueue(WEBHOOK_JOB, delivery_id, job_id=f"{_prefix}-webhook-{delivery_id}",
                                       job_timeout=60, result_ttl=600, failure_ttl=86400)
    except redis.RedisError as exc:
        raise QueueUnavailable(str(exc)) from exc
