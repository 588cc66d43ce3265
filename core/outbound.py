"""THE OutboundEmail lifecycle: its vocabulary and every transition, each one conditional UPDATE.

```
queued ──claim──> sending ──record_sent──> sent ──apply_ses_event──> delivered | bounced | complained
   ^                 │  └─retry──> (stays sending, next_attempt_at = retry time) ──┐
   └──release────────┤                                                        claim
                     └─fail (permanent error, or attempts used up)──> failed
```

The database is the truth. Every transition is an UPDATE whose WHERE clause is the state it
starts from, written with its ``OutboundEvent`` in one transaction; a transition that finds the
row elsewhere changes nothing and says so (returns None/False/0), so a job may run twice, late,
or never (smtpd_worker/jobs.py orchestrates them; docs/relay.md tells the whole story):

- ``claim``: queued/sending, not leased, attempts left -> sending, attempts + 1, leased until
  ``now + lease``, plus an ``attempt`` event, before SES is called. Two workers never both hold a
  row. A row with no attempts left whose last attempt was interrupted is failed instead.
- ``record_sent`` / ``retry`` / ``fail`` / ``release`` / ``renew_lease`` / ``record_batch``
  apply only while the claim is still ours (``sending`` and the same attempt number).
- ``fail`` gives the row's sends back to the quota in the same transaction when SES certainly has
  no part of the message (``_give_back_quota``): only the claim holder fails a row, and only once.
- ``apply_ses_event``: statuses only move up ``RANK``, so duplicate and out-of-order SES events
  are harmless; each SNS message is applied once.

Nothing here commits on its caller's behalf beyond its own ``db.atomic()``; the caller scopes the
connection (``db.connection_context()``).
"""
import datetime
import json
from typing import Callable
from typing import Optional

from peewee import IntegrityError

import models
from core import event_vocabulary as public
from core import events
from core import ids
from core import metrics
from core import outbound_vocabulary as vocabulary

# The vocabulary, re-exported: core/outbound_vocabulary.py is stdlib-only so that the client CLI can
# read it without peewee; every other reader takes these names from here.
QUEUED = vocabulary.QUEUED
SENDING = vocabulary.SENDING
SENT = vocabulary.SENT
DELIVERED = vocabulary.DELIVERED
BOUNCED = vocabulary.BOUNCED
COMPLAINED = vocabulary.COMPLAINED
FAILED = vocabulary.FAILED
SANDBOXED = vocabulary.SANDBOXED
STATUSES = vocabulary.STATUSES
ACTIVE = vocabulary.ACTIVE
FINAL = vocabulary.FINAL
UNDELIVERED = vocabulary.UNDELIVERED
RANK = vocabulary.RANK
EVENT_TYPES = vocabulary.EVENT_TYPES
STATUS_OF_SES_EVENT = vocabulary.STATUS_OF_SES_EVENT

# Error codes raised before any byte of the request reached SES: nothing can have been accepted.
# (A read timeout or a dropped connection may hide an accepted message.)
NEVER_REACHED_SES = ("EndpointConnectionError", "ConnectTimeoutError", "BlobUnavailable")


class Claim:
    """A row this worker holds for one attempt."""

    def __init__(self, row, attempt: int, blob_key, batches_done: dict, size: int = 0, inbox_address=None):
        self.row, self.attempt, self.blob_key = row, attempt, blob_key
        self.batches_done = batches_done  # {batch index: SES MessageId} from earlier attempts
        self.size = size  # bytes of the stored message (0 when its Sent copy is gone)
        self.inbox_address = inbox_address  # read by the claim on Postgres: record_sent's event needs it


# -- the relay's transitions ------------------------------------------------------------------

def claim(outbound_id: int, lease: float, max_attempts: int, worker: str):
    """Take the row for one attempt (see the module docstring). Returns a Claim, or None when the
    row is not claimable: sent, settled, leased by another worker, not due, or out of attempts."""
    e = models.OutboundEmail
    now = models.utcnow()
    lease_until = now + datetime.timedelta(seconds=lease)
    if isinstance(models.db.obj, models.PostgresqlDatabase):
        return _claim_pg(outbound_id, now, lease_until, max_attempts, worker)
    with models.db.atomic():
        # UPDATE first: it takes the write lock at once (SQLite) and is the compare-and-swap.
        claimed = (e.update(status=SENDING, attempts=e.attempts + 1, next_attempt_at=lease_until, updated_at=now)
                   .where(_claimable(outbound_id, now) & (e.attempts < max_attempts))
                   .execute())
        if not claimed:
            _give_up_if_exhausted(outbound_id, now, max_attempts)
            return None
        row = e.get_by_id(outbound_id)
        if _last_attempt_event(row.id) in ("attempt", "batch_sent"):
            _event(row, "possible_duplicate", {
                "attempt": row.attempts - 1,
                "message": "the previous attempt stopped after calling SES without a recorded result; "
                           "if SES accepted it, this attempt sends a second copy"})
        _event(row, "attempt", {"attempt": row.attempts, "worker": worker})
        blob_key, size = _blob(row)
        return Claim(row, row.attempts, blob_key, _batches_done(row.id), size)


def renew_lease(claim: Claim, lease: float) -> int:
    """Push the lease of a claim still ours ``lease`` seconds ahead. 0 when the row moved on."""
    e = models.OutboundEmail
    now = models.utcnow()
    return e.update(next_attempt_at=now + datetime.timedelta(seconds=lease)).where(_ours(claim)).execute()


def record_batch(claim: Claim, index: int, count: int, ses_message_id: str) -> None:
    """SES accepted one recipient batch of a message with more recipients than one call takes."""
    _event(claim.row, "batch_sent", {"attempt": claim.attempt, "batch": index, "batches": count,
                                     "ses_message_id": ses_message_id}, dedupe_key=f"batch:{ses_message_id}")


def record_sent(claim: Claim, ses_message_id: str) -> bool:
    """SES accepted the message: sending -> sent. When the row had moved on (an SES event settled
    it, or our lease ran out) only a missing ``ses_message_id`` is filled in. Either way a ``sent``
    event records the id (once per id). Returns whether the status moved."""
    e = models.OutboundEmail
    now = models.utcnow()
    if claim.inbox_address is not None and isinstance(models.db.obj, models.PostgresqlDatabase):
        if _record_sent_pg(claim, ses_message_id, now):
            return True
        # Not ours any more: the rare path below writes what is left (and moves nothing).
    with models.db.atomic():
        updated = (e.update(status=SENT, ses_message_id=ses_message_id, sent_at=now, updated_at=now,
                            next_attempt_at=None, last_error=None)
                   .where(_ours(claim)).execute())
        detail = {"attempt": claim.attempt, "ses_message_id": ses_message_id}
        if not updated:
            (e.update(ses_message_id=ses_message_id)
             .where((e.id == claim.row.id) & e.ses_message_id.is_null()).execute())
            detail["note"] = "the row had moved on before this result was recorded"
        _event(claim.row, "sent", detail, dedupe_key=f"sent:{ses_message_id}")
        if updated:
            events.record_outbound(public.OUTBOUND_SENT, claim.row.id)
    return bool(updated)


def retry(claim: Claim, message: str, error_detail: dict, delay: int) -> bool:
    """A retryable error: the row stays ``sending``, due again in ``delay`` seconds. Returns False
    (nothing written) when the claim is no longer ours."""
    e = models.OutboundEmail
    now = models.utcnow()
    with models.db.atomic():
        updated = (e.update(next_attempt_at=now + datetime.timedelta(seconds=delay), last_error=message,
                            updated_at=now).where(_ours(claim)).execute())
        if updated:
            _event(claim.row, "retry", {**error_detail, "attempt": claim.attempt, "delay": delay,
                                        "message": f"retry scheduled in {delay} s: {message}"})
    return bool(updated)


def fail(claim: Claim, reason: str, error_detail: dict) -> bool:
    """Fail the row for good with ``reason``, giving its sends back when SES certainly has none of
    it. Returns False (nothing written) when the claim is no longer ours."""
    e = models.OutboundEmail
    now = models.utcnow()
    with models.db.atomic():
        updated = (e.update(status=FAILED, last_error=reason, completed_at=now, updated_at=now,
                            next_attempt_at=None).where(_ours(claim)).execute())
        if updated:
            detail = {**error_detail, "attempt": claim.attempt, "message": reason}
            refund = _give_back_quota(claim.row, error_detail)
            if refund:
                detail["quota_refunded"] = refund
            _event(claim.row, "failed", detail)
            events.record_outbound(public.OUTBOUND_FAILED, claim.row.id)
    return bool(updated)


def release(claim: Claim, reason: str) -> bool:
    """Hand the row back untouched (the attempt does not count): nobody called SES."""
    e = models.OutboundEmail
    with models.db.atomic():
        released = (e.update(status=QUEUED if claim.attempt == 1 else SENDING, attempts=e.attempts - 1,
                             next_attempt_at=None, updated_at=models.utcnow())
                    .where(_ours(claim)).execute())
        if released:
            _event(claim.row, "released", {"attempt": claim.attempt, "message": reason})
    return bool(released)


# -- the relay's hot path on Postgres: one statement per transition -------------------------------
#
# A worker claims and records thousands of rows a minute. On Postgres, ``claim`` and
# ``record_sent`` are each one statement doing exactly what the generic code does in eight or
# nine round trips: the same conditional UPDATE, the same events in the same order, the same
# public event and webhook fan-out. The claim runs inside BEGIN/COMMIT (see _claim_pg); the result
# commits on its own (SES has accepted the message: recording it is right even if we die).
# SQLite keeps the generic code.

def _sql_list(words):
    """Our own vocabulary (lower-case words) as an SQL list of literals, written into the text."""
    assert all(word.isidentifier() and word.islower() for word in words)
    return "(" + ", ".join(f"'{word}'" for word in words) + ")"


# Prepared once per connection (models.HotStatement): the statuses and event types are constants
# written into the text, and the claimed row's columns are named, not *, so that a column added by
# a migration cannot change the prepared statement's result.
_CLAIM_PG = f"""
WITH claimed AS (
    UPDATE outbound_email SET status = 'sending', attempts = attempts + 1, next_attempt_at = %(lease_until)s,
                              updated_at = %(now)s
    WHERE id = %(id)s AND status IN {_sql_list(ACTIVE)} AND (next_attempt_at IS NULL OR next_attempt_at <= %(now)s)
      AND attempts < %(max_attempts)s
    RETURNING {", ".join(models.OutboundEmail._meta.columns)}
), last_attempt AS (
    SELECT type FROM outbound_event WHERE outbound_id = %(id)s AND type IN {_sql_list(vocabulary.ATTEMPT_EVENT_TYPES)}
    ORDER BY id DESC LIMIT 1
), written AS (
    INSERT INTO outbound_event (outbound_id, type, detail, occurred_at)
    SELECT id, type, detail, %(now)s FROM (
        SELECT 1 AS ord, claimed.id, 'possible_duplicate' AS type,
               jsonb_build_object('attempt', claimed.attempts - 1, 'message', %(duplicate)s)::text AS detail
        FROM claimed, last_attempt WHERE last_attempt.type IN ('attempt', 'batch_sent')
        UNION ALL
        SELECT 2, claimed.id, 'attempt', jsonb_build_object('attempt', claimed.attempts, 'worker', %(worker)s)::text
        FROM claimed
    ) AS new_events ORDER BY ord
)
SELECT claimed.*, m.blob_key AS blob_key_, m.size AS size_, i.address AS inbox_address_,
       (SELECT coalesce(json_agg(detail), '[]') FROM outbound_event
        WHERE outbound_id = %(id)s AND type = 'batch_sent') AS batches_
FROM claimed JOIN inbox i ON i.id = claimed.inbox_id LEFT JOIN message m ON m.id = claimed.message_id
"""

DUPLICATE_NOTE = ("the previous attempt stopped after calling SES without a recorded result; "
                  "if SES accepted it, this attempt sends a second copy")


_CLAIM = models.HotStatement("inboxlayer_relay_claim", _CLAIM_PG, dict(
    lease_until="timestamp", now="timestamp", id="bigint", max_attempts="integer", duplicate="text", worker="text"))


def _claim_pg(outbound_id, now, lease_until, max_attempts, worker):
    # In a transaction, not autocommit: a worker killed while its claim waits for the row's lock
    # must not leave a claim that commits on its own once the lock is free (its backend would run
    # the statement to the end): with BEGIN, the server finds the client gone and rolls back.
    # BEGIN travels in the statement's query message (one round trip less than db.atomic()'s own
    # BEGIN); the COMMIT is a message of its own, sent only once the statement's result is back.
    try:
        cursor = models.db.execute_sql("BEGIN;\n" + _CLAIM.text(), {
            "id": outbound_id, "now": now, "lease_until": lease_until, "max_attempts": max_attempts,
            "duplicate": DUPLICATE_NOTE, "worker": worker})
        found = cursor.fetchone()
        description = cursor.description
        models.db.commit()
    except BaseException:
        _rollback_quietly()
        raise
    if found is None:
        with models.db.atomic():
            _give_up_if_exhausted(outbound_id, now, max_attempts)
        return None
    values = dict(zip((c[0] for c in description), found))
    columns = models.OutboundEmail._meta.columns
    row = models.OutboundEmail(**{columns[name].name: value for name, value in values.items() if name in columns})
    row._dirty.clear()
    done = {}
    for detail in values["batches_"]:
        detail = json.loads(detail)
        done[detail["batch"]] = detail["ses_message_id"]
    blob_key, size = (values["blob_key_"], values["size_"]) if values["blob_key_"] is not None else (None, 0)
    return Claim(row, row.attempts, blob_key, done, size, inbox_address=values["inbox_address_"])


def _rollback_quietly():
    """End a failed hand-made transaction; a dead connection has nothing left to roll back."""
    try:
        models.db.rollback()
    except Exception:
        pass


_RECORD_SENT_PG = """
WITH moved AS (
    UPDATE outbound_email SET status = 'sent', ses_message_id = %(ses_message_id)s, sent_at = %(now)s,
                              updated_at = %(now)s, next_attempt_at = NULL, last_error = NULL
    WHERE id = %(id)s AND status = 'sending' AND attempts = %(attempt)s
    RETURNING id, user_id, inbox_id, message_id
), history AS (
    INSERT INTO outbound_event (outbound_id, type, detail, occurred_at, dedupe_key)
    SELECT id, 'sent', %(detail)s, %(now)s, %(dedupe_key)s FROM moved
    ON CONFLICT (dedupe_key) DO NOTHING
), public_event AS (
    INSERT INTO event (public_id, user_id, inbox_id, outbound_id, type, data, created_at)
    SELECT %(event_id)s, moved.user_id, moved.inbox_id, moved.id, %(event_type)s,
           jsonb_set(jsonb_set(jsonb_set(%(data)s::jsonb,
               '{sent_message_id}', coalesce(to_jsonb(m.id), 'null')),
               '{subject}', coalesce(to_jsonb(m.subject), 'null')),
               '{message_id}', coalesce(to_jsonb(m.message_id), 'null'))::text, %(now)s
    FROM moved LEFT JOIN message m ON m.id = moved.message_id
    RETURNING id, user_id, inbox_id
), fan_out AS (
    INSERT INTO webhook_delivery (event_id, endpoint_id, status, attempts, next_attempt_at, created_at)
    SELECT public_event.id, w.id, 'pending', 0, %(now)s, %(now)s FROM public_event, webhook_endpoint w
    WHERE w.user_id = public_event.user_id AND w.enabled
      AND (w.inbox_id IS NULL OR w.inbox_id = public_event.inbox_id)
      AND (w.event_types = '' OR w.event_types LIKE %(event_like)s)
)
SELECT count(*) FROM moved
"""
_RECORD_SENT = models.HotStatement("inboxlayer_relay_record_sent", _RECORD_SENT_PG, dict(
    ses_message_id="text", now="timestamp", id="bigint", attempt="integer", detail="text", dedupe_key="text",
    event_id="text", event_type="text", data="text", event_like="text"))


def _record_sent_pg(claim, ses_message_id, now):
    """record_sent's usual case in one statement: the row is still ours. False (nothing written)
    when it is not. The public event's resource is the row as this UPDATE leaves it: built from
    the claim's copy plus what the UPDATE sets; the Sent copy's fields are read by the statement."""
    row = claim.row
    after = models.OutboundEmail(**{**row.__data__, "status": SENT, "ses_message_id": ses_message_id,
                                    "sent_at": now, "updated_at": now, "next_attempt_at": None,
                                    "last_error": None, "attempts": claim.attempt})
    data = events.outbound_resource(after, claim.inbox_address)
    moved = _RECORD_SENT.run({
        "id": row.id, "attempt": claim.attempt, "ses_message_id": ses_message_id, "now": now,
        "detail": json.dumps({"attempt": claim.attempt, "ses_message_id": ses_message_id}),
        "dedupe_key": f"sent:{ses_message_id}", "event_id": ids.new_event_id(),
        "event_type": public.OUTBOUND_SENT, "data": json.dumps(data),
        "event_like": f"%,{public.OUTBOUND_SENT},%"}).fetchone()[0]
    return bool(moved)


def stale(cutoff: datetime.datetime, limit: int) -> list:
    """(id, status) of up to ``limit`` active rows without progress since ``cutoff``: their lease
    or retry time (or, with none, their last update) is older. The reconciler looks at these."""
    e = models.OutboundEmail
    return [(row.id, row.status) for row in e.select(e.id, e.status).where(
        e.status.in_(ACTIVE),
        (e.next_attempt_at.is_null() & (e.updated_at < cutoff)) | (e.next_attempt_at < cutoff),
    ).order_by(e.id).limit(limit)]


def _claimable(outbound_id, now):
    e = models.OutboundEmail
    return ((e.id == outbound_id) & e.status.in_(ACTIVE)
            & (e.next_attempt_at.is_null() | (e.next_attempt_at <= now)))


def _ours(claim):
    e = models.OutboundEmail
    return (e.id == claim.row.id) & (e.status == SENDING) & (e.attempts == claim.attempt)


def _give_up_if_exhausted(outbound_id, now, max_attempts):
    """A claimable row with no attempts left: its last attempt was interrupted. Fail it."""
    e = models.OutboundEmail
    reason = f"gave up after {max_attempts} attempts; the last one was interrupted"
    failed = (e.update(status=FAILED, last_error=reason, completed_at=now, updated_at=now, next_attempt_at=None)
              .where(_claimable(outbound_id, now) & (e.attempts >= max_attempts)).execute())
    if failed:
        _event(e.get_by_id(outbound_id), "failed", {"message": reason, "attempts": max_attempts})
        events.record_outbound(public.OUTBOUND_FAILED, outbound_id)


def _blob(row):
    """(blob key, size in bytes) of the row's stored message; (None, 0) when it was deleted."""
    if row.message_id is None:
        return None, 0
    m = models.Message
    found = m.select(m.blob_key, m.size).where(m.id == row.message_id).tuples().first()
    return found if found else (None, 0)


def _batches_done(outbound_id):
    ev = models.OutboundEvent
    done = {}
    for event in ev.select(ev.detail).where(ev.outbound == outbound_id, ev.type == "batch_sent"):
        detail = json.loads(event.detail)
        done[detail["batch"]] = detail["ses_message_id"]
    return done


def _last_attempt_event(outbound_id):
    ev = models.OutboundEvent
    return (ev.select(ev.type).where(ev.outbound == outbound_id, ev.type.in_(vocabulary.ATTEMPT_EVENT_TYPES))
            .order_by(ev.id.desc()).limit(1).scalar())


def _give_back_quota(row, error_detail):
    """The row has just been failed, in this transaction: if SES certainly has no part of the
    message, give its sends back to the day they were charged (its created_at, UTC). Only the
    claim holder fails a row, and only once, so the give-back happens once with the status
    change. Returns the event detail of the refund, or None."""
    if not _certainly_unsent(row.id, error_detail):
        return None
    sends = len(json.loads(row.recipients))
    day = row.created_at.date()
    if not models.refund_send(row.user_id, day, sends):
        return None
    return {"sends": sends, "day": day.isoformat()}


def _certainly_unsent(outbound_id, final_error):
    """True when no SES call can have accepted any batch: the final error and every earlier
    retry were refusals (see _refused), no batch was accepted, no attempt was interrupted
    (``possible_duplicate``) and no SES event arrived. Anything else may have reached someone."""
    if not _refused(final_error):
        return False
    ev = models.OutboundEvent
    for event in ev.select(ev.type, ev.detail).where(ev.outbound == outbound_id,
                                                     ev.type.not_in(vocabulary.NO_SEND_EVENT_TYPES)):
        if event.type != "retry" or not _refused(json.loads(event.detail)):
            return False
    return True


def _refused(error_detail):
    """SES answered the call with an error (it has an HTTP status), or the call never left us."""
    return error_detail.get("status") is not None or error_detail.get("code") in NEVER_REACHED_SES


# -- SES events -------------------------------------------------------------------------------

def apply_ses_event(kind: str, sns_message_id: str, ses_message_id, tagged_id, detail: dict,
                    describe: Callable[[], Optional[str]]) -> str:
    """Record an SES event (``kind``: Delivery, Bounce, ...) and move the row's status if it
    advances it. The row is found by ``ses_message_id``, else by ``tagged_id`` (the ``outbound_id``
    tag the relay attaches), so an event also settles a row whose worker died between SES
    accepting and the row recording it. ``describe()`` (called only when the status moves, so a
malformed sub-object matters only then) gives ``last_error``, or None to keep it.

    Returns "applied", "recorded" (history only), "duplicate" (this SNS message was applied
    before) or "unknown" (no such message here)."""
    e = models.OutboundEmail
    # Reads, then writes: on SQLite take the write lock at BEGIN (models.write_atomic), or any other
    # writer committing in between (a submission, the audit trail's batch) fails it at once.
    with models.write_atomic():
        row = e.get_or_none(e.ses_message_id == ses_message_id) if ses_message_id else None
        other_copy = False
        if row is None and tagged_id is not None:
            row = e.get_or_none(e.public_id == tagged_id)
            # Same row, another SES id: a second copy sent in the at-least-once window. Its events
            # confirm the duplicate in the history but never move the row's status.
            other_copy = (row is not None and row.ses_message_id not in (None, ses_message_id)
                          and not _is_batch_of(row, ses_message_id))
        if row is None:
            return "unknown"
        event_type = vocabulary.ses_event_type(kind)
        if other_copy:
            detail = {**detail, "message": f"SES {kind} for a second copy of this message "
                                           "(sent in the at-least-once window)"}
            event_type = vocabulary.DUPLICATE_COPY
        try:
            with models.db.atomic():
                models.OutboundEvent.create(outbound=row, type=event_type, detail=json.dumps(detail),
                                            dedupe_key=f"sns:{sns_message_id}")
        except IntegrityError:
            return "duplicate"
        status = None if other_copy else STATUS_OF_SES_EVENT.get(kind)
        if status is None:
            if not other_copy:
                _public_ses_event(kind, row, detail, False)
            return "recorded"
        earlier = [s for s, rank in RANK.items() if rank < RANK[status]]
        if row.ses_message_id is None and FAILED not in earlier:
            earlier.append(FAILED)  # "gave up" on an interrupted attempt that SES had in fact accepted
        now = models.utcnow()
        changes = {"status": status, "updated_at": now, "completed_at": now, "next_attempt_at": None}
        if row.ses_message_id is None and ses_message_id:
            changes["ses_message_id"] = ses_message_id
        reason = describe()
        if reason:
            changes["last_error"] = reason
        moved = e.update(**changes).where(e.id == row.id, e.status.in_(earlier)).execute()
        _public_ses_event(kind, row, detail, moved)
    if not moved:
        return "recorded"
    metrics.STATUS_CHANGES.labels(status=status).inc()
    return "applied"


def _public_ses_event(kind, row, detail, moved):
    """The public event of an SES event applied to ``row`` (once per SNS message: the caller has
    just recorded it). ``outbound.failed`` (a Reject) only when it failed the row, so it stays once."""
    event_type = public.OF_SES_EVENT.get(kind)
    if event_type is None or (event_type == public.OUTBOUND_FAILED and not moved):
        return
    raw = detail.get(kind[0].lower() + kind[1:]) if isinstance(detail, dict) else None
    events.record_outbound(event_type, row.id, **events.ses_summary(kind, raw))


def _is_batch_of(row, ses_message_id):
    """True when ``ses_message_id`` is one of the row's recipient batches (see record_batch)."""
    ev = models.OutboundEvent
    return ev.select().where(ev.outbound == row.id, ev.dedupe_key == f"batch:{ses_message_id}").exists()


def _event(row, type_, detail, dedupe_key=None):
    try:
        with models.db.atomic():
            models.OutboundEvent.create(outbound=row.id, type=type_, detail=json.dumps(detail),
                                        dedupe_key=dedupe_key)
    except IntegrityError:
        if dedupe_key is None:
            raise  # only a dedupe key may collide; anything else is a real error
