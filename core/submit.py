"""submit(): the ONE path by which a message enters the system, used by SMTP and the REST API.

validate headers -> write the blob -> in ONE transaction reserve quota and insert the Sent copy,
the OutboundEmail (queued) and its first event -> commit -> enqueue the relay job.
After submit() returns, the message is durable: if the enqueue failed, the reconciler finds the
queued row. Every failure before the commit raises a SubmitError and leaves nothing behind.
"""
import contextlib
import datetime
import email.utils
import hashlib
import itertools
import json
import logging
import re
import secrets
from email.header import Header

from peewee import IntegrityError
from peewee import PeeweeException

import models
from core import blobs
from core import event_vocabulary
from core import events
from core import group_commit
from core import headers
from core import ids
from core import keys
from core import metrics
from core import outbound as lifecycle
from core import outbox
from core import quota
from core import recipients as recipient_rules
from core import simulator
from core.errors import BadMessage
from core.errors import DomainNotVerified
from core.errors import IdempotencyConflict
from core.errors import SenderNotAllowed
from core.errors import SubmitError
from core.errors import TemporaryFailure
from core.errors import TooManyListedRecipients
from core.mail import MAX_LISTED_RECIPIENTS

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = headers.MAX_HEADER_BYTES  # octets of the header section (see headers.py)


def check_sender(inbox, address):
    """The envelope sender / From: address must be the inbox (``+tag`` allowed, case-insensitive)."""
    if not address or models.sender_key(address) != inbox.address:
        raise SenderNotAllowed()
    ok, reason = models.inbox_can_send(inbox)
    if not ok:
        raise DomainNotVerified(reason)


# -- the submit path ------------------------------------------------------------------------------

# Sender fields (RFC 5322 3.6.2, 3.6.6) that must name the inbox like From: does: all tenants
# share one SES account, so a foreign Sender: would borrow another tenant's verified domain.
SENDER_FIELDS = (("sender", "Sender"), ("resent-from", "Resent-From"), ("resent-sender", "Resent-Sender"))
# Set by the final delivery MTA (RFC 5321 4.4); a client's is dropped, as a relay would. An SMTP
# client's Idempotency-Key: is ours to read, not the recipient's: dropped before the message is stored.
IDEMPOTENCY_FIELD = "idempotency-key"
DROPPED_FIELDS = frozenset({"return-path", IDEMPOTENCY_FIELD})
MAX_IDEMPOTENCY_KEY = 255  # characters, the column's width (the REST header has the same rule)
IDEMPOTENCY_WINDOW = datetime.timedelta(hours=24)  # a repeated key replays within this; after it, it is a new send
# Display names written unquoted must be atoms (RFC 5322 specials quoted; "=?" would read as an
# encoded-word).
NEEDS_QUOTES = re.compile(r'[][\\()<>@,:;".]|=\?')
SUBJECT_CHARS, FROM_CHARS, TO_CHARS = 10000, 2000, 10000  # the Sent copy's columns


class Checked:
    """What the submit path needs from an accepted header section."""

    def __init__(self, prefix, message_id, subject, from_addr, to_addrs):
        self.prefix, self.message_id = prefix, message_id
        self.subject, self.from_addr, self.to_addrs = subject, from_addr, to_addrs


def check_header_section(section, inbox):
    """Check the header section against ``inbox`` and return a Checked: the bytes to store
    before the body (added From/Message-ID/Date, then the client's fields minus Return-Path),
    the Message-ID and the Sent copy's columns. Raises SubmitError subclasses."""
    budget = headers.Budget()
    added = ""
    from_values = section.values("from")
    if len(from_values) > 1:
        raise SenderNotAllowed()
    if from_values:
        from_text = headers.unfold(from_values[0])
        if _mailbox_list(from_text, budget) != [inbox.address]:
            raise SenderNotAllowed()
    else:  # RFC 6409 8: a submission server may complete the message; GNU mail writes no From:
        from_text = from_field(inbox)
        added += f"From: {from_text}\r\n"
    for name, label in SENDER_FIELDS:
        for value in section.values(name):
            keys = _mailbox_list(headers.unfold(value), budget)
            if not keys or any(key != inbox.address for key in keys):
                reason = f"{label}: header address not owned by authenticated inbox"
                raise SenderNotAllowed(reason, f"550 5.7.1 {reason}")
    check_listed_recipients(section, budget)
    message_id = section.text("message-id") or ""
    if not message_id:
        message_id = f"<{secrets.token_hex(16)}@{inbox.address.rsplit('@', 1)[1]}>"
        added += f"Message-ID: {message_id}\r\n"
    if not section.values("date"):
        added += f"Date: {email.utils.format_datetime(datetime.datetime.now(datetime.timezone.utc))}\r\n"
    to_addrs = ", ".join(filter(None, (headers.display_text(section.text(name) or "", TO_CHARS)
                                       for name in ("to", "cc"))))
    return Checked(prefix=added.encode("utf-8") + section.without(DROPPED_FIELDS), message_id=message_id,
                   subject=headers.display_text(section.text("subject") or "", SUBJECT_CHARS),
                   from_addr=headers.display_text(from_text, FROM_CHARS), to_addrs=to_addrs[:TO_CHARS])


def _mailbox_list(text, budget):
    """The sender keys (models.sender_key) of a sender field's mailboxes; [] when it is not a
    plain mailbox list (a group, or anything readers could take differently)."""
    try:
        return [models.sender_key(address) for address in headers.mailboxes(text, budget, groups=False)]
    except headers.AddressSyntax:
        return []


def check_listed_recipients(section, budget):
    """Refuse To:/Cc: that are malformed or list more than MAX_LISTED_RECIPIENTS addresses
    (counted like the relay counts them: every address of every To and Cc field)."""
    listed = 0
    for name, label in (("to", "To"), ("cc", "Cc")):
        for value in section.values(name):
            try:
                listed += len(headers.mailboxes(headers.unfold(value), budget,
                                                limit=MAX_LISTED_RECIPIENTS - listed))
            except headers.TooManyAddresses:
                raise TooManyListedRecipients(MAX_LISTED_RECIPIENTS) from None
            except headers.AddressSyntax as exc:
                raise BadMessage(f"Malformed {label}: header: {exc}") from None


def from_field(inbox):
    """The From: value for ``inbox``: its display name (quoted, or RFC 2047 encoded-words of at
    most 75 characters when not ASCII) and address."""
    name = inbox.display_name or ""
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return inbox.address
    if not name.isascii():
        encoded = Header(name, "utf-8", maxlinelen=76, header_name="From").encode(linesep="\r\n")
        return f"{encoded} <{inbox.address}>"
    if NEEDS_QUOTES.search(name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{inbox.address}>'
    return f"{name} <{inbox.address}>"


class _Prefixed:
    """A read-only stream: ``prefix`` then the rest of ``body``."""

    def __init__(self, prefix, body):
        self.prefix, self.body = prefix, body

    def read(self, size=-1):
        if size is None or size < 0:
            chunk, self.prefix = self.prefix + self.body.read(), b""
            return chunk
        if self.prefix:
            chunk, self.prefix = self.prefix[:size], self.prefix[size:]
            return chunk
        return self.body.read(size)


def valid_idempotency_key(key):
    """True for 1 to MAX_IDEMPOTENCY_KEY printable ASCII characters (REST header and SMTP field alike)."""
    return bool(key) and len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable()


def submit(user, inbox, mail_from, recipients, spool, via, idempotency_key=None, request_hash=None, refused=(),
           key=None, all_known=False):
    """Accept a message for relay; return the committed OutboundEmail (``replayed`` set on it
    when an idempotency key named an earlier send, which is returned instead).

    ``spool`` is a binary file holding the whole message with CRLF line ends (SMTP DATA after
    dot-unstuffing, or the MIME built by the REST API). The caller has authenticated ``user``,
    checked it owns ``inbox`` and applied the rate limit. ``refused``: [(address, reply)] of
    recipients refused at RCPT, recorded with the message. ``key``: the ApiToken used (its daily
    cap and sandbox flag apply). Over SMTP an ``Idempotency-Key:`` field in the message plays the
    REST header's part. ``all_known``: the caller has just found every recipient known to the
    inbox (or not counted as a contact) and read the inbox's pause into ``inbox`` (SMTP's RCPT
    checks and end-of-DATA refresh); a known recipient stays known, so the commit then skips its
    own look (one query less a message). Raises SubmitError subclasses.
    """
    try:
        return _accept(user, inbox, mail_from, recipients, spool, via, idempotency_key, request_hash, refused, key,
                       all_known)
    except SubmitError as exc:
        raise metrics.refused(exc)


def _message_idempotency(section, spool, mail_from, recipients):
    """(key, request hash) from the message's Idempotency-Key: field, or (None, None). The hash
    covers the envelope and the message as received, so the same key with another message is a
    conflict, as over REST."""
    values = section.values(IDEMPOTENCY_FIELD)
    if not values:
        return None, None
    key = headers.unfold(values[0]).strip()
    if len(values) > 1 or not valid_idempotency_key(key):
        raise BadMessage(f"Idempotency-Key must appear once, 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    digest = hashlib.sha256(json.dumps([mail_from.lower(), sorted(r.lower() for r in recipients)]).encode())
    spool.seek(0)
    for chunk in iter(lambda: spool.read(1 << 16), b""):
        digest.update(chunk)
    return key, "smtp:" + digest.hexdigest()[:59]


def _accept(user, inbox, mail_from, recipients, spool, via, idempotency_key, request_hash, refused=(), key=None,
            all_known=False):
    check_sender(inbox, mail_from)
    simulated = simulator.classify(recipients)
    try:
        section = headers.read_section(spool)
        checked = check_header_section(section, inbox)
    except headers.HeaderError as exc:
        raise BadMessage(str(exc), exc.status) from None
    if via == "smtp" and idempotency_key is None:
        idempotency_key, request_hash = _message_idempotency(section, spool, mail_from, recipients)
        if idempotency_key is not None:
            with models.db.connection_context():
                earlier = earlier_send(user, idempotency_key, request_hash)
            if earlier is not None:
                earlier.replayed = True
                return earlier
    sandboxed = key is not None and key.sandbox and not simulated
    status = lifecycle.SANDBOXED if sandboxed else lifecycle.QUEUED
    charged = 0 if (sandboxed or simulated) else len(recipients)
    spool.seek(section.body_offset)
    public_id = ids.new_public_id()
    now = models.utcnow()
    blob_key = f"{now:%Y/%m/%d}/{public_id}.eml"
    try:
        # The name is made durable with the commit: one directory fsync per batch (_commit_batch)
        size = blobs.store().put(blob_key, _Prefixed(checked.prefix, spool), sync_name=False)
    except blobs.BlobError as exc:
        log.error("blob write failed for %s: %s", public_id, exc)
        raise TemporaryFailure() from exc
    try:
        outbound = _commit(user, inbox, mail_from, recipients, via, public_id, blob_key, size, checked,
                           idempotency_key, request_hash, refused, key, status, charged, all_known)
    except SubmitError:  # quota reached, idempotency conflict: nothing was written
        _discard_blob(blob_key)
        raise
    except _Replay as replay:
        _discard_blob(blob_key)
        replay.outbound.replayed = True
        return replay.outbound
    except (PeeweeException, OSError, blobs.BlobError, group_commit.Interrupted) as exc:
        # A connection lost at COMMIT leaves the outcome unknown: the row may be there. Look
        # once more; if it is, the message is durable and the client deserves its 250.
        outbound = _committed_row(public_id)
        if outbound is None:
            # Keep the blob: if the commit did land after all, the relay needs it; an orphan
            # file only costs disk.
            log.error("commit failed for %s: %s", public_id, exc, extra={"outbound_id": public_id})
            raise TemporaryFailure() from exc
        log.warning("commit of %s reported %s but the row is there", public_id, exc,
                    extra={"outbound_id": public_id})
        outbound.enqueued = False
    metrics.MESSAGES_ACCEPTED.labels(via=via).inc()
    metrics.MESSAGE_BYTES.labels(via=via).inc(size)
    log.info("accepted %s via %s from %s to %d recipient(s), %d bytes%s", public_id, via, inbox.address,
             len(recipients), size, " (sandboxed)" if sandboxed else "", extra={"outbound_id": public_id})
    if outbound.status != lifecycle.SANDBOXED and not outbound.enqueued:
        _enqueue([outbound.id])  # committed alone (first contacts, key cap, refused recipients)
    return outbound


def _enqueue(outbound_ids):
    try:
        outbox.enqueue_relays(outbound_ids)
    except outbox.QueueUnavailable as exc:
        # The rows are committed: the reconciler will enqueue them. The 250 stays true.
        log.warning("enqueue failed for %s, left to the reconciler: %s", outbound_ids, exc)


def _committed_row(public_id):
    try:
        with models.db.connection_context():
            return models.OutboundEmail.get_or_none(models.OutboundEmail.public_id == public_id)
    except (PeeweeException, OSError):
        return None


class _Replay(Exception):
    def __init__(self, outbound):
        self.outbound = outbound


def _commit(user, inbox, mail_from, recipients, via, public_id, blob_key, size, checked, idempotency_key,
            request_hash, refused=(), key=None, status=lifecycle.QUEUED, charged=None, all_known=False):
    """Store the message; the OutboundEmail as callers read it (``enqueued`` set when its relay
    job was enqueued with its batch). Opens its own connections: a caller waiting for its
    batch holds none."""
    limit = quota.plan_of(user)["daily_send_limit"]
    charged = len(recipients) if charged is None else charged
    now = models.utcnow()
    fields = dict(
        user_id=user.id, inbox_id=inbox.id, public_id=public_id, via=via, mail_from=mail_from,
        recipients=json.dumps(list(recipients)), message_id=checked.message_id[:998], size=size, blob_key=blob_key,
        subject=checked.subject, from_addr=checked.from_addr, to_addrs=checked.to_addrs,
        event_detail=json.dumps({"via": via, "recipients": len(recipients), "size": size,
                                 **({"refused": [{"address": a, "reason": r} for a, r in refused]} if refused else {})}),
        idempotency_key=idempotency_key, request_hash=request_hash, now=now, status=status)
    fields.update(events.queued_fields(public_id, inbox.address, fields))  # written in the same statement
    enqueued = False
    try:
        capped = key is not None and key.daily_limit is not None
        contacts = recipient_rules.counted(recipients, sandbox=status == lifecycle.SANDBOXED)
        if all_known:
            recipient_rules.check_paused(inbox, as_read=True)
            first_contacts = []
        else:
            with models.db.connection_context():
                first_contacts = recipient_rules.unknown_recipients(inbox, contacts)  # raises InboxPaused
        if not first_contacts and not refused and not capped:
            # The common case, one statement (models.record_submission): committed together with
            # the messages that end at the same moment (group commit), its relay job enqueued with theirs.
            item = _batcher.run(_Pending(fields, charged, limit, status))
            if item.error is not None:
                raise item.error
            ids, enqueued = item.result
        else:  # first contacts counted against the cap, the key's own daily cap reserved, RCPT refusals
            # recorded, in the transaction that stores the message (alone: see docs/smtp.md)
            blobs.store().sync_names([blob_key])
            with models.db.connection_context(), models.write_atomic():
                if first_contacts:
                    recipient_rules.admit(user, inbox, contacts)
                if capped and not models.reserve_key_send(key.id, len(recipients), key.daily_limit):
                    raise keys.limit_exceeded(keys.key_sends_today(key.id), key.daily_limit)
                ids = models.record_submission(fields, charged, limit)
                if ids is None:
                    raise quota.exceeded(models.sends_today(user), limit)
                if refused:  # the recipients refused at RCPT while the others went: the event says which
                    events.record_outbound(event_vocabulary.OUTBOUND_REFUSED, ids[1], refused_recipients=[
                        {"address": a, "reason": r} for a, r in refused])
    except IntegrityError:
        if idempotency_key is None:
            raise
        with models.db.connection_context():
            existing = earlier_send(user, idempotency_key, request_hash)
        if existing is None:
            raise
        raise _Replay(existing) from None
    if ids is None:
        with models.db.connection_context():
            raise quota.exceeded(models.sends_today(user), limit)
    sent_id, outbound_id = ids
    # What the callers read, without a query to fetch back what was just written.
    outbound = models.OutboundEmail(
        id=outbound_id, public_id=public_id, user=user, inbox=inbox, message=sent_id, via=via, mail_from=mail_from,
        recipients=fields["recipients"], status=status, attempts=0, idempotency_key=idempotency_key,
        request_hash=request_hash, created_at=now, updated_at=now)
    outbound.enqueued = enqueued
    return outbound


# -- group commit ---------------------------------------------------------------------------------

class _Pending:
    """One message waiting for its batch: record_submission's arguments."""

    __slots__ = ("fields", "charged", "limit", "status")

    def __init__(self, fields, charged, limit, status):
        self.fields, self.charged, self.limit, self.status = fields, charged, limit, status


def _commit_batch(items):
    """Commit the messages of ``items`` in one transaction; each item gets (ids, enqueued) with
    ids None when over its account's quota, or its own IntegrityError (a reused idempotency key:
    its statement ran under a savepoint, so its neighbours go on). Any other error fails the
    whole batch: the callers then look for their rows (_committed_row), as after a lost COMMIT.

    Messages are written in account order, so two processes' batches take the accounts' usage
    row locks in the same order and cannot deadlock on them."""
    ordered = sorted(items, key=lambda item: (item.payload.fields["user_id"], item.payload.fields["public_id"]))
    blobs.store().sync_names([item.payload.fields["blob_key"] for item in items])  # the blobs' names, durable first
    with models.db.connection_context():
        # Alone and without a key, the message is one statement and its own transaction (on Postgres
        # no BEGIN/COMMIT round trips); otherwise one transaction for the batch.
        alone = len(ordered) == 1 and ordered[0].payload.fields["idempotency_key"] is None
        with contextlib.nullcontext() if alone else models.write_atomic():
            keyed_or_not = itertools.groupby(ordered, lambda item: item.payload.fields["idempotency_key"] is not None)
            for keyed, run in keyed_or_not:
                run = list(run)
                if not keyed:  # nothing in these can collide: no savepoint, one round trip, in account order
                    results = models.record_submissions([(i.payload.fields, i.payload.charged, i.payload.limit)
                                                         for i in run])
                    for item, result in zip(run, results):
                        item.result = result
                    continue
                for item in run:
                    pending = item.payload
                    try:
                        with models.db.atomic():  # a savepoint: a duplicate key rolls back this message only
                            item.result = models.record_submission(pending.fields, pending.charged, pending.limit)
                    except IntegrityError as exc:
                        item.error = exc
    # Committed: every caller may now be answered. One Redis round trip enqueues the batch's relay jobs.
    relayed = [item for item in items if item.error is None and item.result is not None
               and item.payload.status != lifecycle.SANDBOXED]
    enqueued = False
    if relayed:
        try:
            outbox.enqueue_relays([item.result[1] for item in relayed])
            enqueued = True
        except outbox.QueueUnavailable as exc:  # the rows are committed: the reconciler enqueues them
            log.warning("enqueue of %d message(s) failed, left to the reconciler: %s", len(relayed), exc)
    for item in items:
        if item.error is None:
            item.result = (item.result, enqueued or item.payload.status == lifecycle.SANDBOXED)


_batcher = group_commit.Batcher(_commit_batch)
metrics.SUBMIT_WAITING.set_function(_batcher.waiting)


def earlier_send(user, idempotency_key, request_hash):
    """The send ``idempotency_key`` already made for ``user`` within IDEMPOTENCY_WINDOW (to be
    replayed), or None; IdempotencyConflict if that send was for another request (``request_hash``
    differs). After the window the key may be used again for a new send.

    The one replay rule: the REST API asks before building a message, and submit asks again when
    the unique index on (user, idempotency_key) refuses a concurrent duplicate.
    """
    existing = models.OutboundEmail.get_or_none(models.OutboundEmail.user == user,
                                                models.OutboundEmail.idempotency_key == idempotency_key)
    if existing is not None and existing.created_at < models.utcnow() - IDEMPOTENCY_WINDOW:
        # An expired key is free again: the old row lets go of it (only when it is reused, so no
        # sweep and no cost on sends without a key), and the unique index admits the new send.
        models.OutboundEmail.update(idempotency_key=None).where(
            models.OutboundEmail.id == existing.id, models.OutboundEmail.idempotency_key == idempotency_key).execute()
        return None
    if existing is not None and existing.request_hash != request_hash:
        raise IdempotencyConflict("This Idempotency-Key was used with a different request")
    return existing


def _discard_blob(blob_key):
    try:
        blobs.store().delete(blob_key)
    except blobs.BlobError as exc:
        log.warning("could not remove orphan blob %s: %s", blob_key, exc)
