"""Redis and the RQ relay queue: the one place that knows their names."""
import zlib

import redis
from rq import Queue
from rq.job import Job
from rq.job import JobStatus
from rq.utils import get_call_string
from rq.utils import now
from rq.utils import utcformat

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


def enqueue_relay(outbound_id: int) -> None:
    """Enqueue the relay job for an OutboundEmail. Raises QueueUnavailable if Redis is down.

    The job id is derived from the row, so a second enqueue of a job still waiting is a no-op
    in practice (the job hash is replaced) and the reconciler cannot pile up duplicates.
    """
    enqueue_relays([outbound_id])


def enqueue_relays(outbound_ids) -> None:
    """enqueue_relay for several rows in one pipelined Redis round trip (a group commit's batch).
    Raises QueueUnavailable if Redis is down.

    Writes what RQ's ``Queue.enqueue_many`` writes (MULTI; SADD of the queue; per job HSET of the
    job hash and RPUSH of its id; EXEC), without building an RQ Job object per message: that cost
    more CPU than the rest of a message's commit. The job hash is RQ's own serialization of a
    template job with only the per-message fields replaced (see ``_RelayJobTemplate``);
    tests/test_outbox_enqueue.py holds it equal to what RQ writes."""
    ids = list(dict.fromkeys(outbound_ids))
    if not ids:
        return
    queue = relay_queue()
    try:
        template = _relay_template(queue)
        stamp = utcformat(now())
        pipe = connection().pipeline()  # a MULTI/EXEC transaction, as RQ's
        pipe.sadd(queue.redis_queues_keys, queue.key)
        for outbound_id in ids:
            job_id = relay_job_id(outbound_id)
            pipe.hset(Job.key_for(job_id), mapping=template.mapping(outbound_id, stamp))
            pipe.rpush(queue.key, job_id)
        pipe.execute()
    except redis.RedisError as exc:
        raise QueueUnavailable(str(exc)) from exc


class _RelayJobTemplate:
    """RQ's serialization (``Job.to_dict``) of a relay job, made once per process and setting;
    ``mapping`` fills in what differs between messages: the argument (in ``data`` and
    ``description``) and the creation and enqueue times."""

    def __init__(self, queue, timeout):
        job = queue.create_job(RELAY_JOB, args=(0,), job_id="template", timeout=timeout,
                               result_ttl=RELAY_RESULT_TTL, failure_ttl=RELAY_FAILURE_TTL)
        job.origin, job.enqueued_at = queue.name, now()  # what Queue._prepare_for_queue sets
        self.key = (queue.name, timeout)
        self.serializer, self.func_name = job.serializer, job.func_name
        self.fields = job.to_dict()
        self.fields["status"] = JobStatus.QUEUED.value

    def mapping(self, outbound_id, stamp):
        args = (outbound_id,)
        return dict(self.fields, created_at=stamp, enqueued_at=stamp,
                    data=zlib.compress(self.serializer.dumps((self.func_name, None, args, {}))),
                    description=get_call_string(self.func_name, args, {}))


RELAY_RESULT_TTL = 3600  # seconds RQ keeps a finished relay job (the row is the record)
RELAY_FAILURE_TTL = 86400  # seconds RQ keeps a failed one, for an operator to look at
_template = None


def _relay_template(queue):
    global _template
    timeout = settings.current().relay.job_timeout
    if _template is None or _template.key != (queue.name, timeout):
        _template = _RelayJobTemplate(queue, timeout)
    return _template


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
