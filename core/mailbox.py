"""What a mail client (IMAP) sees of an inbox: its folders, their messages, UIDs and flags.

Protocol-free: imapd/ parses and renders IMAP, this module answers from the models and the blob
store. Each function scopes its own connection (``connection_context``), so an idle IMAP session
holds none.

UIDs are Message.imap_uid, taken from the inbox's counter (models.ImapUidCounter) in the
transaction that stores the message; the counter's row lock makes the inbox's commits take turns,
so UIDs become visible in ascending order and a client that saw UID n never learns of a lower one
later. They are never reused: messages are only deleted with their inbox, and a re-created inbox
is a new row with a new counter and a new ``created_at``, which is the UIDVALIDITY. (Messages
stored before migration 0011 kept their id as their UID.)
"""
import calendar
import datetime
from array import array
from dataclasses import dataclass

from peewee import JOIN

import redis

import models
from core import accounts
from core import blobs
from core import keys
from core import outbox
from core.errors import KeyRefused

FOLDERS = {"INBOX": "inbox", "Sent": "sent"}  # IMAP name -> Message.folder
SPECIAL_USE = {"Sent": "\\Sent"}  # RFC 6154
FLAGS_VERSION = "imapflags"  # Redis counter per inbox, moved on every flag change (see flags_version)
FLAGS_VERSION_TTL = 86400  # seconds; an expired counter reads 0, which a session takes as a change
DUPLICATE_WINDOW = datetime.timedelta(days=7)  # an APPEND matches a Sent copy this recent (same Message-ID)
ROWS_PER_QUERY = 500  # UIDs per IN (...) list


@dataclass
class MessageMeta:
    uid: int
    size: int
    internal_date: datetime.datetime  # naive UTC
    blob_key: str
    message_id: str
    subject: str
    from_addr: str
    to_addrs: str
    seen: bool
    flagged: bool


def folder_key(name):
    """The Message.folder of IMAP mailbox ``name`` (INBOX in any case, Sent), or None."""
    if name.upper() == "INBOX":
        return "inbox"
    for imap_name, key in FOLDERS.items():
        if name.lower() == imap_name.lower():
            return key
    return None


def imap_name(key):
    return {v: k for k, v in FOLDERS.items()}[key]


def uidvalidity(inbox):
    """Stable for the life of the inbox, new for a re-created one: its creation second (non-zero, 32 bits)."""
    return max(1, calendar.timegm(inbox.created_at.timetuple()) & 0xFFFFFFFF)


# -- who is this -----------------------------------------------------------------------------------

def authenticate(address, token):
    """The Inbox ``address`` when ``token`` is a live API token of the account owning it, and the
    token row; (None, None) otherwise. ``core.accounts.lookup_token`` resolves the token, as for
    SMTP AUTH and REST."""
    try:
        address = models.normalize_address(address)
    except models.AddressError:
        return None, None
    with models.db.connection_context():
        row = accounts.lookup_token(token)
        if row is None:
            return None, None
        inbox = models.Inbox.get_or_none(models.Inbox.address == address)
    if inbox is None or inbox.user_id != row.user_id:
        return None, None
    try:  # the key's expiry, read permission and inbox scope (core/keys.py), as for SMTP and REST
        keys.check(row, keys.READ, inbox)
    except KeyRefused:
        return None, None
    return inbox, row


def still_authorized(inbox_id, token_id):
    """True while token ``token_id`` is live (not revoked, not expired) and its account owns inbox
    ``inbox_id`` (one query, per command)."""
    with models.db.connection_context():
        return (models.Inbox.select(models.Inbox.id)
                .join(models.ApiToken, on=(models.ApiToken.user == models.Inbox.user))
                .where(models.Inbox.id == inbox_id, models.ApiToken.id == token_id,
                       models.ApiToken.revoked_at.is_null(),
                       models.ApiToken.expires_at.is_null() | (models.ApiToken.expires_at > models.utcnow()))
                .exists())


# -- what a folder holds ---------------------------------------------------------------------------

def uids(inbox_id, folder, after=0):
    """The UIDs in ``folder`` above ``after``, ascending, as a compact array (8 bytes each)."""
    with models.db.connection_context():
        query = (models.Message.select(models.Message.imap_uid)
                 .where(models.Message.inbox == inbox_id, models.Message.folder == folder,
                        models.Message.imap_uid > after)
                 .order_by(models.Message.imap_uid).tuples())
        return array("q", (row[0] for row in query.iterator()))


def _meta_query(inbox_id, folder):
    return (models.Message.select(models.Message, models.MessageFlags.seen, models.MessageFlags.flagged)
            .join(models.MessageFlags, JOIN.LEFT_OUTER, on=(models.MessageFlags.message == models.Message.id))
            .where(models.Message.inbox == inbox_id, models.Message.folder == folder)
            .order_by(models.Message.imap_uid))


def _meta(row):
    flags = getattr(row, "messageflags", None)
    return MessageMeta(uid=row.imap_uid, size=row.size, internal_date=row.created_at, blob_key=row.blob_key,
                       message_id=row.message_id, subject=row.subject or "", from_addr=row.from_addr or "",
                       to_addrs=row.to_addrs or "", seen=bool(flags and flags.seen), flagged=bool(flags and flags.flagged))


def metadata(inbox_id, folder, wanted):
    """MessageMeta of the UIDs ``wanted`` (an ascending list), in that order, fetched in batches."""
    found = {}
    with models.db.connection_context():
        for start in range(0, len(wanted), ROWS_PER_QUERY):
            batch = wanted[start:start + ROWS_PER_QUERY]
            for row in _meta_query(inbox_id, folder).where(models.Message.imap_uid.in_(batch)):
                found[row.imap_uid] = _meta(row)
    return [found[uid] for uid in wanted if uid in found]


def all_metadata(inbox_id, folder):
    """Every message's MessageMeta, streamed (SEARCH reads them once, in UID order)."""
    with models.db.connection_context():
        for row in _meta_query(inbox_id, folder).iterator():
            yield _meta(row)


def status(inbox_id, folder):
    """(messages, unseen, highest UID the inbox has handed out) of ``folder``: UIDNEXT is one more."""
    with models.db.connection_context():
        base = models.Message.select().where(models.Message.inbox == inbox_id, models.Message.folder == folder)
        total = base.count()
        seen = (base.join(models.MessageFlags, on=(models.MessageFlags.message == models.Message.id))
                .where(models.MessageFlags.seen == True).count())  # noqa: E712 (peewee expression)
        highest = (models.ImapUidCounter.select(models.ImapUidCounter.last_uid)  # the inbox's, any folder
                   .where(models.ImapUidCounter.inbox == inbox_id).scalar()) or 0
    return total, total - seen, highest


def set_flags(inbox_id, folder, wanted, seen=None, flagged=None):
    """Set \\Seen and/or \\Flagged (None = leave) on the UIDs ``wanted`` of ``folder`` (others ignored)."""
    changes = {}
    if seen is not None:
        changes["seen"] = seen
    if flagged is not None:
        changes["flagged"] = flagged
    if not changes or not wanted:
        return
    with models.db.connection_context():
        for start in range(0, len(wanted), ROWS_PER_QUERY):
            batch = [row[0] for row in models.Message.select(models.Message.id).where(
                models.Message.inbox == inbox_id, models.Message.folder == folder,
                models.Message.imap_uid.in_(wanted[start:start + ROWS_PER_QUERY])).tuples()]
            if not batch:
                continue
            with models.db.atomic():
                (models.MessageFlags.insert_many([{"message": uid} for uid in batch])
                 .on_conflict_ignore().execute())
                models.MessageFlags.update(**changes).where(models.MessageFlags.message.in_(batch)).execute()
    _flags_changed(inbox_id)


def flags_version(inbox_id):
    """A number that moves whenever a flag of the inbox changes (one Redis GET: what an idle
    session polls before reading every flag again), or None when Redis is unavailable."""
    try:
        return int(outbox.connection().get(outbox.key(FLAGS_VERSION, inbox_id)) or 0)
    except (redis.RedisError, outbox.QueueUnavailable):
        return None


def _flags_changed(inbox_id):
    try:
        connection = outbox.connection()
        name = outbox.key(FLAGS_VERSION, inbox_id)
        connection.pipeline().incr(name).expire(name, FLAGS_VERSION_TTL).execute()
    except (redis.RedisError, outbox.QueueUnavailable):
        pass  # sessions then learn of it at their next NOOP/CHECK, which compare anyway


def flag_rows(inbox_id, folder):
    """(uid, seen, flagged) of the messages in ``folder`` with any flag set, streamed."""
    with models.db.connection_context():
        query = (models.Message.select(models.Message.imap_uid, models.MessageFlags.seen, models.MessageFlags.flagged)
                 .join(models.MessageFlags, on=(models.MessageFlags.message == models.Message.id))
                 .where(models.Message.inbox == inbox_id, models.Message.folder == folder,
                        (models.MessageFlags.seen == True) | (models.MessageFlags.flagged == True))  # noqa: E712
                 .tuples())
        for uid, seen, flag in query.iterator():
            yield uid, bool(seen), bool(flag)


def open_message(blob_key):
    """The stored bytes as a seekable binary file (the caller closes it). BlobError when unavailable."""
    return blobs.store().open(blob_key)


def find_sent_copy(inbox_id, message_id, now=None):
    """The UID of a recent Sent copy in the inbox with this Message-ID (the one a client that saves
    its own copy after sending would APPEND again), or None."""
    if not message_id:
        return None
    since = (now or models.utcnow()) - DUPLICATE_WINDOW
    with models.db.connection_context():
        return (models.Message.select(models.Message.imap_uid)
                .where(models.Message.inbox == inbox_id, models.Message.folder == "sent",
                       models.Message.message_id == message_id[:998], models.Message.created_at >= since)
                .order_by(models.Message.imap_uid.desc()).scalar())
