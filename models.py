"""Data model and the domain rules that belong to the data.

Helpers here do not commit: the caller that owns the unit of work wraps writes in
``with db.atomic():`` and scopes the connection (``with db.connection_context():``).
"""
import datetime
import json
import re
import time
import weakref
from pathlib import Path

import peewee
import psycopg2
from peewee import BigIntegerField
from peewee import BooleanField
from peewee import Case
from peewee import CharField
from peewee import DatabaseProxy
from peewee import DateField
from peewee import DateTimeField
from peewee import ForeignKeyField
from peewee import IntegerField
from peewee import IntegrityError
from peewee import Model
from peewee import PostgresqlDatabase
from peewee import SqliteDatabase
from peewee import TextField
from peewee import Value
from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url
from playhouse.migrations import Runner
from playhouse.pool import PooledPostgresqlDatabase


db = DatabaseProxy()

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
DOMAIN_STATUSES = ("pending", "verified", "failed")


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class PostgresPool(PooledPostgresqlDatabase):
    """peewee's Postgres pool, less one round trip a checkout. peewee pings (``SELECT 1``, holding
    the pool's lock) every connection it hands out, which was one extra round trip for each of the
    four or five queries of an SMTP message. This pool pings only a connection that rested in the
    pool for RECHECK_AFTER seconds or more (after a Postgres restart or a killed backend, those are
    the ones found dead); one checked in a moment ago, idle and not closed, is handed out as it is.
    If it died in that moment, its next statement fails as on a connection that dies in use."""

    RECHECK_AFTER = 1.0  # seconds
    prepare = True  # HotStatement's statements prepared on each new connection (database.prepare_statements)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prepared = weakref.WeakKeyDictionary()  # connection -> names of the statements prepared on it
        self._checked_in_at = {}  # id(connection) -> when it went back to the pool

    def _is_closed(self, conn):
        if conn.closed:
            return True
        checked_in = self._checked_in_at.get(id(conn))
        if (checked_in is not None and time.monotonic() - checked_in < self.RECHECK_AFTER
                and self._adapter.txn_status(conn) == self._adapter.txn_idle):
            return False
        return super()._is_closed(conn)

    def _close(self, conn, close_conn=False):
        if close_conn:
            self._checked_in_at.pop(id(conn), None)
        else:
            self._checked_in_at[id(conn)] = time.monotonic()
        super()._close(conn, close_conn)

    def _close_raw(self, conn):
        self._checked_in_at.pop(id(conn), None)
        super()._close_raw(conn)

    def _connect(self):
        conn = super()._connect()
        if conn not in self._prepared:  # a new connection (a reused one was prepared when it was new)
            self._prepared[conn] = HotStatement.prepare_all(conn) if self.prepare else frozenset()
        return conn

    def prepared_on(self, conn):
        """The names of the hot statements prepared on ``conn``."""
        return self._prepared.get(conn, ())


class CompiledSelect:
    """A model select whose SQL text peewee builds once per database, not on every call: for a
    joined select of whole rows, building the text cost more CPU than the database spent running
    it (SMTP's AUTH runs two for every connection). ``first(*values)`` runs it with ``values`` in
    place of the arguments ``build`` was given, and returns the first row as models (joins
    included, as peewee's ``first()`` would), or None."""

    def __init__(self, build):
        self.build = build
        self._compiled = None  # (database, query, sql, params, slots)

    def first(self, *values):
        database = db.obj
        compiled = self._compiled
        if compiled is None or compiled[0] is not database:
            markers = [f"\x00argument {n}\x00" for n in range(len(values))]
            query = self.build(*markers).limit(1)
            sql, params = query.sql()
            slots = [markers.index(p) if isinstance(p, str) and p in markers else None for p in params]
            if sorted(s for s in slots if s is not None) != list(range(len(values))):
                raise ValueError("every argument must appear once in the query's parameters")
            compiled = self._compiled = (database, query, sql, params, slots)
        _, query, sql, params, slots = compiled
        cursor = database.execute_sql(sql, [p if s is None else values[s] for p, s in zip(params, slots)])
        for row in query._get_cursor_wrapper(cursor):  # peewee's own hydration, joins included
            return row
        return None


class HotStatement:
    """A statement run for every message (SMTP asks some of them several times a message),
    prepared once on each new Postgres connection: the server then skips parsing and planning,
    which cost it more CPU than running them (0.2-0.5 ms each against 0.03-0.5 ms). Elsewhere,
    and on a connection where PREPARE failed (tables not migrated yet), the plain SQL runs.

    ``sql`` uses the driver's placeholders: ``{p}`` (positional, formatted with the database's
    param) or, for a Postgres-only statement, ``%(name)s``. ``types``: the Postgres types of the
    parameters, in order (positional) or by name; declared because PREPARE cannot always infer
    them (a parameter in an INSERT ... SELECT list has no context)."""

    registry = []

    def __init__(self, name, sql, types):
        self.name, self.sql = name, sql
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
        if names:  # named: $n by first appearance
            body = sql
            for n, param in enumerate(names, 1):
                body = body.replace(f"%({param})s", f"${n}")
            declared = [types[param] for param in names]
            self.execute_sql = f"EXECUTE {name} ({', '.join(f'%({param})s' for param in names)})"
        else:
            count = sql.count("{p}")
            body = sql.format(p="\0").replace("\0", "{}").format(*(f"${n}" for n in range(1, count + 1)))
            declared = list(types)
            self.execute_sql = f"EXECUTE {name} ({', '.join(['%s'] * count)})"
        self.prepare_sql = f"PREPARE {name} ({', '.join(declared)}) AS {body}"
        HotStatement.registry.append(self)

    def run(self, params):
        """Execute with ``params`` on the current connection; returns the cursor."""
        return db.obj.execute_sql(self.text(), params)

    def text(self):
        """The SQL that runs it on the current connection: EXECUTE where it is prepared."""
        database = db.obj
        if isinstance(database, PostgresPool) and self.name in database.prepared_on(database.connection()):
            return self.execute_sql
        return self.sql.format(p=database.param) if "{p}" in self.sql else self.sql

    @classmethod
    def prepare_all(cls, conn):
        prepared = set()
        with conn.cursor() as cursor:
            for statement in cls.registry:
                try:
                    cursor.execute(statement.prepare_sql)  # autocommit: not part of any transaction
                except psycopg2.Error:
                    continue  # e.g. a table not created yet: this connection runs the plain SQL
                prepared.add(statement.name)
        return frozenset(prepared)


def init_database(url, max_connections=20, prepare=True):
    """Bind the proxy to ``url``. Pooled on Postgres (``prepare``: HotStatement prepares its
    statements on each new connection); WAL and a busy timeout on SQLite."""
    pool_options = dict(autoconnect=False, max_connections=max_connections, stale_timeout=300, timeout=10)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        database = connect_url(url, autoconnect=False, timeout=30, pragmas={
            "journal_mode": "wal", "busy_timeout": 30000, "foreign_keys": 1, "synchronous": "normal"})
    elif url.startswith("postgres://") or url.startswith("postgresql://"):
        database = PostgresPool(**parse_url(url), **pool_options)
        database.prepare = prepare
    else:  # another peewee URL (e.g. postgresext+pool://), as given
        database = connect_url(url, **pool_options)
    db.initialize(database)
    return database


def write_atomic():
    """A transaction that will write. On SQLite it takes the write lock at BEGIN (IMMEDIATE): a
    deferred transaction that reads first and then writes fails at once with "database is locked"
    when another writer committed in between (WAL snapshot), whatever the busy timeout."""
    if isinstance(db.obj, SqliteDatabase):
        return db.atomic("IMMEDIATE")
    return db.atomic()


class BaseModel(Model):
    class Meta:
        database = db
        legacy_table_names = False


class User(BaseModel):
    email = CharField(max_length=254, unique=True)
    password_hash = CharField(max_length=255)
    plan = CharField(max_length=32, default="free")
    created_at = DateTimeField(default=utcnow)
    session_epoch = IntegerField(default=0)  # dashboard sessions of an older generation are ended (logout)


class ApiToken(BaseModel):
    user = ForeignKeyField(User, backref="tokens", on_delete="CASCADE")
    name = CharField(max_length=100)
    prefix = CharField(max_length=16)
    token_hash = CharField(max_length=64, unique=True)
    created_at = DateTimeField(default=utcnow)
    last_used_at = DateTimeField(null=True)
    revoked_at = DateTimeField(null=True)
    # Scope (core/keys.py holds the rules): NULL = every inbox of the account, else a JSON list of inbox ids.
    inbox_ids = TextField(null=True)
    permissions = CharField(max_length=64, default="send,read")  # comma-separated: send, read, manage
    expires_at = DateTimeField(null=True)
    daily_limit = IntegerField(null=True)  # sends per UTC day for this key, under the account's quota
    sandbox = BooleanField(default=False)  # accepted and stored, never relayed nor charged
    last_used_ip = CharField(max_length=64, null=True)
    last_used_via = CharField(max_length=8, null=True)  # smtp | api


class Domain(BaseModel):
    """One account's claim on a domain name. Many accounts may claim a name while it is pending;
    at most one row per name is ``verified`` (partial unique index ``domain_name_verified``)."""
    user = ForeignKeyField(User, backref="domains", on_delete="CASCADE")
    name = CharField(max_length=253, index=True)
    status = CharField(max_length=16, default="pending")
    verification_token = CharField(max_length=64)  # this claim's own; the TXT record proves the claim
    dkim_tokens = TextField(default="[]")  # JSON list from SES CreateEmailIdentity
    created_at = DateTimeField(default=utcnow)
    verified_at = DateTimeField(null=True)
    last_checked_at = DateTimeField(null=True)
    last_error = TextField(null=True)
    ses_identity_created = BooleanField(default=False)  # our CreateEmailIdentity made it (not AlreadyExists)
    failing_since = DateTimeField(null=True)  # verified, but the last re-checks found the records gone

    class Meta:
        indexes = ((("user", "name"), True),)


class Inbox(BaseModel):
    user = ForeignKeyField(User, backref="inboxes", on_delete="CASCADE")
    local_part = CharField(max_length=64)
    domain = ForeignKeyField(Domain, backref="inboxes", null=True, on_delete="CASCADE")
    address = CharField(max_length=320, unique=True)
    display_name = CharField(max_length=100, default="")
    created_at = DateTimeField(default=utcnow)
    paused_at = DateTimeField(null=True)  # set: refuses to send (core/recipients.py), until resumed
    paused_reason = TextField(null=True)
    resumed_at = DateTimeField(null=True)  # the auto-pause counts bounces and complaints after this only
    new_recipients_per_day = IntegerField(null=True)  # first-contact cap; null = the plan's


class Message(BaseModel):
    inbox = ForeignKeyField(Inbox, backref="messages", on_delete="CASCADE")
    folder = CharField(max_length=16, default="sent")
    message_id = CharField(max_length=998)
    subject = TextField(default="")
    from_addr = TextField(default="")
    to_addrs = TextField(default="")
    size = BigIntegerField()
    blob_key = CharField(max_length=255, index=True)
    created_at = DateTimeField(default=utcnow, index=True)
    # The IMAP UID: from the inbox's ImapUidCounter, taken in the transaction that inserts the row,
    # so UIDs ascend in commit order and are never reused (not the id: Postgres hands ids out at
    # INSERT, and two sends can commit in the opposite order).
    imap_uid = BigIntegerField()

    class Meta:
        indexes = ((("inbox", "folder", "imap_uid"), True),)


class ImapUidCounter(BaseModel):
    """The last IMAP UID an inbox handed out. Its row lock serialises the inbox's commits that take
    one (record_submission), which is what makes UID order the order in which messages become visible."""
    inbox = ForeignKeyField(Inbox, primary_key=True, on_delete="CASCADE")
    last_uid = BigIntegerField()


class MessageFlags(BaseModel):
    """IMAP flags a mail client set on a stored message (no row = no flag set)."""
    message = ForeignKeyField(Message, unique=True, on_delete="CASCADE")
    seen = BooleanField(default=False)
    flagged = BooleanField(default=False)


class OutboundEmail(BaseModel):
    public_id = CharField(max_length=40, unique=True)
    user = ForeignKeyField(User, backref="outbound", on_delete="CASCADE")
    inbox = ForeignKeyField(Inbox, backref="outbound", on_delete="CASCADE")
    message = ForeignKeyField(Message, null=True, on_delete="SET NULL")
    via = CharField(max_length=8)
    mail_from = CharField(max_length=320)
    recipients = TextField()  # JSON list of envelope recipients (Bcc included)
    status = CharField(max_length=16, default="queued", index=True)
    ses_message_id = CharField(max_length=128, null=True, unique=True)
    attempts = IntegerField(default=0)
    last_error = TextField(null=True)
    idempotency_key = CharField(max_length=255, null=True)
    request_hash = CharField(max_length=64, null=True)
    created_at = DateTimeField(default=utcnow, index=True)
    updated_at = DateTimeField(default=utcnow, index=True)
    sent_at = DateTimeField(null=True)
    completed_at = DateTimeField(null=True)
    next_attempt_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("user", "idempotency_key"), True),)


class OutboundEvent(BaseModel):
    outbound = ForeignKeyField(OutboundEmail, backref="events", on_delete="CASCADE")
    type = CharField(max_length=32)
    detail = TextField(default="{}")  # JSON
    occurred_at = DateTimeField(default=utcnow, index=True)
    dedupe_key = CharField(max_length=255, null=True, unique=True)


class SendUsage(BaseModel):
    user = ForeignKeyField(User, backref="usage", on_delete="CASCADE")
    day = DateField()
    count = IntegerField(default=0)

    class Meta:
        indexes = ((("user", "day"), True),)


class Suppression(BaseModel):
    """An address this account will not send to (core/recipients.py owns the rules)."""
    user = ForeignKeyField(User, backref="suppressions", on_delete="CASCADE")
    address = CharField(max_length=320)  # the comparable key: core.recipients.address_key
    original = CharField(max_length=320)  # as given by hand or reported by SES
    source = CharField(max_length=16)  # bounce | complaint | manual
    reason = TextField()
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("user", "address"), True),)


class RecipientRule(BaseModel):
    """One entry of an inbox's recipient policy: ``bob@x.com``, ``@x.com`` or ``*.x.com``."""
    inbox = ForeignKeyField(Inbox, backref="recipient_rules", on_delete="CASCADE")
    kind = CharField(max_length=8)  # allow | block
    pattern = CharField(max_length=320)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("inbox", "kind", "pattern"), True),)


class KnownRecipient(BaseModel):
    """An address this inbox has mailed (a committed message): not a first contact any more."""
    inbox = ForeignKeyField(Inbox, backref="known_recipients", on_delete="CASCADE")
    address = CharField(max_length=320)
    first_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("inbox", "address"), True),)


class NewRecipientUsage(BaseModel):
    """First contacts an inbox made on one UTC day (the first-contact cap's counter)."""
    inbox = ForeignKeyField(Inbox, backref="new_recipient_usage", on_delete="CASCADE")
    day = DateField()
    count = IntegerField(default=0)

    class Meta:
        indexes = ((("inbox", "day"), True),)


class Event(BaseModel):
    """A public event (core/event_vocabulary.py), written in the transaction of the state change it
    reports. ``id`` orders the feed (its cursor); ``public_id`` (``evt_...``) is what users see and
    de-duplicate on; ``data`` (JSON) is the resource as it was at that moment."""
    public_id = CharField(max_length=40, unique=True)
    user = ForeignKeyField(User, backref="events", on_delete="CASCADE")
    inbox = ForeignKeyField(Inbox, null=True, on_delete="SET NULL")
    outbound = ForeignKeyField(OutboundEmail, null=True, on_delete="SET NULL")
    type = CharField(max_length=40)
    data = TextField(default="{}")
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("user", "id"), False),)


class WebhookEndpoint(BaseModel):
    """Where an account's events are POSTed. ``event_types``: "" for every type, else
    ",type,type," (so one LIKE selects the endpoints of a type in the fan-out)."""
    public_id = CharField(max_length=40, unique=True)
    user = ForeignKeyField(User, backref="webhook_endpoints", on_delete="CASCADE")
    url = CharField(max_length=2048)
    event_types = TextField(default="")
    inbox = ForeignKeyField(Inbox, null=True, on_delete="CASCADE")
    enabled = BooleanField(default=True)
    secret = CharField(max_length=100)
    previous_secret = CharField(max_length=100, null=True)  # still signs until previous_secret_until
    previous_secret_until = DateTimeField(null=True)
    disabled_reason = TextField(null=True)
    failing_since = DateTimeField(null=True)  # first failure since the last success
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)


class WebhookDelivery(BaseModel):
    """One event to one endpoint: created with the event (fan-out), sent by the workers.
    ``next_attempt_at`` is when it is due, and while an attempt runs, when that attempt's lease ends."""
    event = ForeignKeyField(Event, on_delete="CASCADE")
    endpoint = ForeignKeyField(WebhookEndpoint, backref="deliveries", on_delete="CASCADE")
    status = CharField(max_length=16, default="pending")
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(null=True)
    dispatched_at = DateTimeField(null=True)  # last handed to the queue
    last_status_code = IntegerField(null=True)
    last_error = TextField(null=True)
    created_at = DateTimeField(default=utcnow)
    completed_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("event", "endpoint"), True), (("status", "next_attempt_at"), False))


class WebhookAttempt(BaseModel):
    """One HTTP request of a delivery: the delivery log."""
    delivery = ForeignKeyField(WebhookDelivery, backref="attempt_log", on_delete="CASCADE")
    attempt = IntegerField()
    status_code = IntegerField(null=True)
    latency_ms = IntegerField(null=True)
    response = TextField(default="")  # truncated
    error = TextField(null=True)
    created_at = DateTimeField(default=utcnow, index=True)


class KeyUsage(BaseModel):
    """Sends counted against one API key's ``daily_limit`` (like SendUsage for the account)."""
    token = ForeignKeyField(ApiToken, backref="usage", on_delete="CASCADE")
    day = DateField()
    count = IntegerField(default=0)

    class Meta:
        indexes = ((("token", "day"), True),)


class AuditEvent(BaseModel):
    """One authentication or send decision (core/audit.py writes them in batches)."""
    user = ForeignKeyField(User, backref="audit", null=True, on_delete="CASCADE")
    token = ForeignKeyField(ApiToken, null=True, on_delete="SET NULL")
    key_prefix = CharField(max_length=16, default="")
    action = CharField(max_length=16)  # auth | send
    outcome = CharField(max_length=16)  # success | failure | accepted | refused
    reason = CharField(max_length=64, default="")  # a refusal's code (key_scope, quota_exceeded, ...)
    protocol = CharField(max_length=8)  # smtp | api
    client_ip = CharField(max_length=64, default="")
    detail = TextField(default="")
    occurred_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("user", "id"), False),)


MODELS = [User, ApiToken, Domain, Inbox, Message, ImapUidCounter, MessageFlags, OutboundEmail, OutboundEvent, SendUsage,
          Suppression, RecipientRule, KnownRecipient, NewRecipientUsage, Event, WebhookEndpoint, WebhookDelivery,
          WebhookAttempt, KeyUsage, AuditEvent]


# -- schema ---------------------------------------------------------------------------------

def migrate_schema():
    """Apply pending migrations (idempotent). Returns the names applied."""
    return Runner(db.obj, str(MIGRATIONS_DIR)).up()


def schema_status():
    return Runner(db.obj, str(MIGRATIONS_DIR)).status()


# -- API tokens (the rules: core/accounts) -------------------------------------------------------

def live_token_by_hash(token_hash):
    """The unrevoked ApiToken whose sha256 is ``token_hash``, its User joined, or None."""
    return _LIVE_TOKEN.first(token_hash)


_LIVE_TOKEN = CompiledSelect(lambda token_hash: ApiToken.select(ApiToken, User).join(User).where(
    ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_null()))


# -- addresses --------------------------------------------------------------------------------

class AddressError(ValueError):
    pass


MAX_DISPLAY_NAME = 100  # characters, the Inbox.display_name column


def normalize_address(address):
    """Lower-case ``local@domain`` after basic checks; raises AddressError with a reason."""
    address = (address or "").strip()
    if address.count("@") != 1:
        raise AddressError("an address needs exactly one @")
    local, domain = address.rsplit("@", 1)
    if not local or not domain:
        raise AddressError("an address needs a local part and a domain")
    if len(local) > 64 or len(address) > 254:
        raise AddressError("address too long")
    return f"{local.lower()}@{normalize_domain(domain)}"


def normalize_domain(name):
    name = (name or "").strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise AddressError(f"{name!r} is not a valid domain name") from None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(
            0 < len(l) <= 63 and l.replace("-", "").isalnum() and not l.startswith("-") and not l.endswith("-")
            for l in labels):
        raise AddressError(f"{name!r} is not a valid domain name")
    return name


def sender_key(address):
    """The comparable form of a sender address: lower-case, ``+tag`` dropped from the local part."""
    local, _, domain = address.strip().rpartition("@")
    return f"{local.lower().split('+', 1)[0]}@{domain.lower().rstrip('.')}"


LOCAL_PART_ALLOWED = set("abcdefghijklmnopqrstuvwxyz0123456789.-_")


def inbox_can_send(inbox):
    """(ok, reason): a custom-domain inbox sends only while its domain is verified."""
    if inbox.domain_id is None:
        return True, None
    domain = inbox.domain
    if domain.status != "verified":
        return False, f"Domain {domain.name} is not verified"
    return True, None


# -- send quota -------------------------------------------------------------------------------

def today():
    return utcnow().date()


def sends_today(user):
    row = SendUsage.get_or_none(SendUsage.user == user, SendUsage.day == today())
    return row.count if row else 0


def reserve_send(user, count, limit):
    """Atomically add ``count`` sends to today's usage if it stays within ``limit``.

    One conditional UPDATE: Postgres re-checks the WHERE after taking the row lock and SQLite
    serialises writers, so concurrent reservers can never push the counter past the limit.
    Returns True when reserved. Commits nothing itself: callers run it in the transaction that
    stores the message, so a rollback gives the reservation back.
    """
    if count <= 0:
        return True
    if count > limit:
        return False
    day = today()
    SendUsage.insert(user=user, day=day, count=0).on_conflict_ignore().execute()
    updated = (SendUsage.update(count=SendUsage.count + count)
               .where(SendUsage.user == user, SendUsage.day == day, SendUsage.count + count <= limit)
               .execute())
    return updated == 1


def reserve_key_send(token_id, count, limit):
    """Like reserve_send, for one API key's own daily cap (KeyUsage). Commits nothing."""
    if count <= 0:
        return True
    if count > limit:
        return False
    day = today()
    KeyUsage.insert(token=token_id, day=day, count=0).on_conflict_ignore().execute()
    return (KeyUsage.update(count=KeyUsage.count + count)
            .where(KeyUsage.token == token_id, KeyUsage.day == day, KeyUsage.count + count <= limit)
            .execute()) == 1


def refund_send(user, day, count):
    """Give ``count`` sends back to the usage of ``day`` (the day they were charged), never
    below zero. Commits nothing: the caller runs it in the transaction that fails the message,
    so the give-back happens with that status change, once. Returns the rows changed (0 when
    nothing was charged that day)."""
    if count <= 0:
        return 0
    return (SendUsage.update(count=Case(None, [(SendUsage.count >= count, SendUsage.count - count)], 0))
            .where(SendUsage.user == user, SendUsage.day == day).execute())


_SENDER_STATE = HotStatement("inboxlayer_sender_state", (
    'SELECT u.plan, d.status, COALESCE(s.count, 0), COALESCE(k.count, 0), i.paused_at, i.paused_reason '
    'FROM inbox i '
    'JOIN "user" u ON u.id = i.user_id '
    'JOIN api_token t ON t.user_id = u.id AND t.id = {p} AND t.revoked_at IS NULL '
    'LEFT JOIN domain d ON d.id = i.domain_id '
    'LEFT JOIN send_usage s ON s.user_id = u.id AND s.day = {p} '
    'LEFT JOIN key_usage k ON k.token_id = t.id AND k.day = {p} '
    'WHERE i.address = {p}'), ("bigint", "date", "date", "text"))


def sender_state(address, token_id):
    """(plan, domain status or None, sends today, the token's own sends today, the inbox's
    paused_at and paused_reason) for the inbox ``address`` while token ``token_id`` is live and
    its account owns the inbox; None otherwise. One query, because SMTP asks it for every message."""
    day = today().isoformat()
    return _SENDER_STATE.run((token_id, day, day, address)).fetchone()


# One statement, so one round trip and (in autocommit) its own transaction: the usage row is
# locked only while the statement runs. Every insert reads the row before it, so when the quota
# UPDATE's WHERE fails nothing is inserted and the statement returns no row.
_RECORD_SUBMISSION_PG = """
WITH usage AS (
    INSERT INTO send_usage (user_id, day, count) VALUES (%(user_id)s, %(day)s, %(count)s)
    ON CONFLICT (user_id, day) DO UPDATE SET count = send_usage.count + EXCLUDED.count
    WHERE send_usage.count + EXCLUDED.count <= %(limit)s
    RETURNING 1
), uid AS (
    INSERT INTO imap_uid_counter (inbox_id, last_uid) SELECT %(inbox_id)s, 1 FROM usage
    ON CONFLICT (inbox_id) DO UPDATE SET last_uid = imap_uid_counter.last_uid + 1
    RETURNING last_uid
), sent AS (
    INSERT INTO message (inbox_id, folder, message_id, subject, from_addr, to_addrs, size, blob_key, created_at,
                         imap_uid)
    SELECT %(inbox_id)s, 'sent', %(message_id)s, %(subject)s, %(from_addr)s, %(to_addrs)s, %(size)s,
           %(blob_key)s, %(now)s, uid.last_uid FROM usage, uid
    RETURNING id
), outbound AS (
    INSERT INTO outbound_email (public_id, user_id, inbox_id, message_id, via, mail_from, recipients, status,
                                attempts, idempotency_key, request_hash, created_at, updated_at)
    SELECT %(public_id)s, %(user_id)s, %(inbox_id)s, sent.id, %(via)s, %(mail_from)s, %(recipients)s, %(status)s,
           0, %(idempotency_key)s, %(request_hash)s, %(now)s, %(now)s FROM sent
    RETURNING id
), event AS (
    INSERT INTO outbound_event (outbound_id, type, detail, occurred_at)
    SELECT id, %(status)s, %(event_detail)s, %(now)s FROM outbound
), public_event AS (
    INSERT INTO event (public_id, user_id, inbox_id, outbound_id, type, data, created_at)
    SELECT %(public_event_id)s, %(user_id)s, %(inbox_id)s, outbound.id, %(public_event_type)s,
           jsonb_set(%(public_event_data)s::jsonb, '{sent_message_id}', to_jsonb(sent.id))::text, %(now)s
    FROM sent, outbound
    RETURNING id
), fan_out AS (
    INSERT INTO webhook_delivery (event_id, endpoint_id, status, attempts, next_attempt_at, created_at)
    SELECT public_event.id, w.id, 'pending', 0, %(now)s, %(now)s FROM public_event, webhook_endpoint w
    WHERE w.user_id = %(user_id)s AND w.enabled AND (w.inbox_id IS NULL OR w.inbox_id = %(inbox_id)s)
      AND (w.event_types = '' OR w.event_types LIKE %(public_event_like)s)
)
SELECT sent.id, outbound.id FROM sent, outbound
"""


def fan_out(event_id, user_id, inbox_id, event_type, now):
    """One delivery row per enabled endpoint of ``user_id`` that takes ``event_type`` (and, if it
    has an inbox filter, ``inbox_id``), due at ``now``. Runs in the caller's transaction, the one
    that wrote the event. Returns the number of rows inserted."""
    w = WebhookEndpoint
    inbox_match = w.inbox.is_null() if inbox_id is None else (w.inbox.is_null() | (w.inbox == inbox_id))
    query = (w.select(Value(event_id), w.id, Value("pending"), Value(0), Value(now), Value(now))
             .where(w.user == user_id, w.enabled == True, inbox_match,  # noqa: E712 (SQL, not Python)
                    (w.event_types == "") | w.event_types.contains(f",{event_type},")))
    return WebhookDelivery.insert_from(query, [
        WebhookDelivery.event, WebhookDelivery.endpoint, WebhookDelivery.status, WebhookDelivery.attempts,
        WebhookDelivery.next_attempt_at, WebhookDelivery.created_at]).execute()


def insert_event(public_id, user_id, inbox_id, outbound_id, event_type, data_json, now):
    """Write one Event and its deliveries, in the caller's transaction. Returns the Event id."""
    event_id = Event.insert(public_id=public_id, user=user_id, inbox=inbox_id, outbound=outbound_id,
                            type=event_type, data=data_json, created_at=now).execute()
    fan_out(event_id, user_id, inbox_id, event_type, now)
    return event_id


def next_imap_uid(inbox_id):
    """Take the inbox's next IMAP UID, in the caller's transaction: the counter row stays locked
    until it commits, so the inbox's next UID is taken only after this one is visible. (Postgres's
    submission does the same inside its one statement, the ``uid`` step of _RECORD_SUBMISSION_PG.)"""
    (ImapUidCounter.insert(inbox=inbox_id, last_uid=1)
     .on_conflict(conflict_target=[ImapUidCounter.inbox],
                  update={ImapUidCounter.last_uid: ImapUidCounter.last_uid + 1}).execute())
    return ImapUidCounter.select(ImapUidCounter.last_uid).where(ImapUidCounter.inbox == inbox_id).scalar()


_RECORD_SUBMISSION = HotStatement("inboxlayer_record_submission", _RECORD_SUBMISSION_PG, dict(
    user_id="bigint", day="date", count="integer", limit="integer", inbox_id="bigint", message_id="text",
    subject="text", from_addr="text", to_addrs="text", size="bigint", blob_key="text", now="timestamp",
    public_id="text", via="text", mail_from="text", recipients="text", status="text", idempotency_key="text",
    request_hash="text", event_detail="text", public_event_id="text", public_event_type="text",
    public_event_data="text", public_event_like="text"))


def _submission_params(fields, count, limit):
    return dict(fields, status=fields.get("status", "queued"), day=today(), count=count, limit=limit)


def record_submissions(submissions):
    """record_submission for each (fields, count, limit) of ``submissions``, in order, inside the
    caller's transaction; the list of what each returned. On Postgres in two round trips whatever
    their number (a group commit's batch): their statements go in one message, then one query
    reads back the ids of those that were stored. None may carry an idempotency key: a conflict
    would fail the statements after it (the caller runs those under a savepoint of their own)."""
    if not isinstance(db.obj, PostgresqlDatabase) or len(submissions) < 2:
        return [record_submission(*submission) for submission in submissions]
    cursor = db.cursor()
    text = _RECORD_SUBMISSION.text()
    statements = [cursor.mogrify(text, _submission_params(fields, count, limit))
                  for fields, count, limit in submissions if count <= limit]
    if statements:
        with peewee.__exception_wrapper__:  # psycopg2's errors as peewee's, as execute_sql raises them
            cursor.execute(b";\n".join(statements))
    public_ids = [fields["public_id"] for fields, _, _ in submissions]
    stored = {public_id: (message_id, outbound_id) for public_id, message_id, outbound_id in db.execute_sql(
        "SELECT public_id, message_id, id FROM outbound_email WHERE public_id = ANY(%s)", (public_ids,)).fetchall()}
    return [stored.get(public_id) for public_id in public_ids]


def record_submission(fields, count, limit):
    """Store a submitted message, all or nothing: the Sent copy (Message), the queued
    OutboundEmail, its first event, and ``count`` sends reserved within ``limit``.

    ``fields``: user_id, inbox_id, public_id, via, mail_from, recipients (JSON), message_id,
    subject, from_addr, to_addrs, size, blob_key, event_detail (JSON), idempotency_key,
    request_hash, now, and the public event: public_event_id, public_event_type, public_event_data
    (JSON; its ``sent_message_id`` is filled in here), public_event_like (the fan-out's LIKE).
    Optionally status (``queued``; ``sandboxed`` for a sandbox key's message, whose first event has
    the same name). Returns (message id, outbound id), or None when the reservation would pass
    ``limit``. A reused idempotency key raises IntegrityError.
    """
    if count > limit:
        return None
    if isinstance(db.obj, PostgresqlDatabase):
        return _RECORD_SUBMISSION.run(_submission_params(fields, count, limit)).fetchone()
    fields = dict(fields, status=fields.get("status", "queued"))
    with db.atomic() as transaction:
        message_id = Message.insert(
            inbox=fields["inbox_id"], folder="sent", message_id=fields["message_id"], subject=fields["subject"],
            from_addr=fields["from_addr"], to_addrs=fields["to_addrs"], size=fields["size"],
            blob_key=fields["blob_key"], created_at=fields["now"],
            imap_uid=next_imap_uid(fields["inbox_id"])).execute()
        outbound_id = OutboundEmail.insert(
            public_id=fields["public_id"], user=fields["user_id"], inbox=fields["inbox_id"], message=message_id,
            via=fields["via"], mail_from=fields["mail_from"], recipients=fields["recipients"], status=fields["status"],
            idempotency_key=fields["idempotency_key"], request_hash=fields["request_hash"],
            created_at=fields["now"], updated_at=fields["now"]).execute()
        OutboundEvent.insert(outbound=outbound_id, type=fields["status"], detail=fields["event_detail"],
                             occurred_at=fields["now"]).execute()
        data = json.loads(fields["public_event_data"])
        data["sent_message_id"] = message_id
        insert_event(fields["public_event_id"], fields["user_id"], fields["inbox_id"], outbound_id,
                     fields["public_event_type"], json.dumps(data), fields["now"])
        if not reserve_send(fields["user_id"], count, limit):
            transaction.rollback()
            return None
        return message_id, outbound_id


