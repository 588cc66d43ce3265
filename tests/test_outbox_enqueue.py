"""The relay enqueue writes the job hash RQ itself would write (core/outbox.enqueue_relays skips
RQ's per-job objects for speed), and an RQ worker runs what it enqueued."""
from rq import Queue
from rq.job import Job
from rq.job import JobStatus

from core import outbox

TIMES = ("created_at", "enqueued_at")

def test_enqueue_writes_the_job_hash_rq_writes(config, redis_conn):
    import settings

    outbox.enqueue_relays([41, 42, 41])
    ours = {41: redis_conn.hgetall(Job.key_for(outbox.relay_job_id(41))),
            42: redis_conn.hgetall(Job.key_for(outbox.relay_job_id(42)))}
    assert outbox.relay_queue().job_ids == [outbox.relay_job_id(41), outbox.relay_job_id(42)]  # once each
    assert outbox.relay_queue().key.encode() in redis_conn.smembers(Queue.redis_queues_keys)

    redis_conn.delete(*[Job.key_for(outbox.relay_job_id(i)) for i in (41, 42)], outbox.relay_queue().key)
    outbox.relay_queue().enqueue_many([
        Queue.prepare_data(outbox.RELAY_JOB, (i,), job_id=outbox.relay_job_id(i),
                           timeout=settings.current().relay.job_timeout,
                           result_ttl=outbox.RELAY_RESULT_TTL, failure_ttl=outbox.RELAY_FAILURE_TTL)
        for i in (41, 42)])
    for outbound_id in (41, 42):
        theirs = redis_conn.hgetall(Job.key_for(outbox.relay_job_id(outbound_id)))
        assert set(ours[outbound_id]) == set(theirs)
        assert {k: v for k, v in ours[outbound_id].items() if k.decode() not in TIMES} == \
            {k: v for k, v in theirs.items() if k.decode() not in TIMES}

    job = Job.fetch(outbox.relay_job_id(42), connection=redis_conn)
    assert (job.func_name, job.args, job.get_status()) == (outbox.RELAY_JOB, (42,), JobStatus.QUEUED)
