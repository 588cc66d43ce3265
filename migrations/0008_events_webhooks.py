"""Events out: the ``event`` table (one row per public state change, written in the transaction of
the change; its id is the feed's cursor), webhook endpoints, and one delivery row per (event,
endpoint) with its attempts (the delivery log). Existing rows are untouched. A frozen copy of the
models as of this migration."""
from peewee import BooleanField
from peewee import CharField
from peewee import DateTimeField
from peewee import ForeignKeyField
from peewee import IntegerField
from peewee import Model
from peewee import TextField


def _tables(db):
    class Base(Model):
        class Meta:
            database = db

    class User(Base):
        class Meta:
            table_name = "user"

    class Inbox(Base):
        class Meta:
            table_name = "inbox"

    class OutboundEmail(Base):
        class Meta:
            table_name = "outbound_email"

    class Event(Base):
        public_id = CharField(max_length=40, unique=True)
        user = ForeignKeyField(User, on_delete="CASCADE")
        inbox = ForeignKeyField(Inbox, null=True, on_delete="SET NULL")
        outbound = ForeignKeyField(OutboundEmail, null=True, on_delete="SET NULL")
        type = CharField(max_length=40)
        data = TextField(default="{}")
        created_at = DateTimeField(index=True)

        class Meta:
            table_name = "event"
            indexes = ((("user", "id"), False),)

    class WebhookEndpoint(Base):
        public_id = CharField(max_length=40, unique=True)
        user = ForeignKeyField(User, on_delete="CASCADE")
        url = CharField(max_length=2048)
        event_types = TextField(default="")
        inbox = ForeignKeyField(Inbox, null=True, on_delete="CASCADE")
        enabled = BooleanField(default=True)
        secret = CharField(max_length=100)
        previous_secret = CharField(max_length=100, null=True)
        previous_secret_until = DateTimeField(null=True)
        disabled_reason = TextField(null=True)
        failing_since = DateTimeField(null=True)
        created_at = DateTimeField()
        updated_at = DateTimeField()

        class Meta:
            table_name = "webhook_endpoint"

    class WebhookDelivery(Base):
        event = ForeignKeyField(Event, on_delete="CASCADE")
        endpoint = ForeignKeyField(WebhookEndpoint, on_delete="CASCADE")
        status = CharField(max_length=16, default="pending")
        attempts = IntegerField(default=0)
        next_attempt_at = DateTimeField(null=True)
        dispatched_at = DateTimeField(null=True)
        last_status_code = IntegerField(null=True)
        last_error = TextField(null=True)
        created_at = DateTimeField()
        completed_at = DateTimeField(null=True)

        class Meta:
            table_name = "webhook_delivery"
            indexes = ((("event", "endpoint"), True), (("status", "next_attempt_at"), False))

    class WebhookAttempt(Base):
        delivery = ForeignKeyField(WebhookDelivery, on_delete="CASCADE")
        attempt = IntegerField()
        status_code = IntegerField(null=True)
        latency_ms = IntegerField(null=True)
        response = TextField(default="")
        error = TextField(null=True)
        created_at = DateTimeField(index=True)

        class Meta:
            table_name = "webhook_attempt"

    return [Event, WebhookEndpoint, WebhookDelivery, WebhookAttempt]


def up(migrator, db):
    db.create_tables(_tables(db))


def down(migrator, db):
    db.drop_tables(list(reversed(_tables(db))))
