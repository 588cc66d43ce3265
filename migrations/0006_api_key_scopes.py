"""API keys an agent can be trusted with: inbox scope, permissions, expiry, a per-key daily cap,
sandbox, where the key was last used, and the audit trail (issue 13).

Keys that exist when this runs keep what they could do before: every inbox of the account, send,
read and manage (the REST API let any key create inboxes), no expiry, no cap, not sandboxed.
"""
from peewee import BooleanField
from peewee import CharField
from peewee import DateField
from peewee import DateTimeField
from peewee import ForeignKeyField
from peewee import IntegerField
from peewee import Model
from peewee import TextField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("api_token", "inbox_ids", TextField(null=True)),  # JSON list; NULL = all inboxes
        migrator.add_column("api_token", "permissions", CharField(max_length=64, default="send,read,manage")),
        migrator.add_column("api_token", "expires_at", DateTimeField(null=True)),
        migrator.add_column("api_token", "daily_limit", IntegerField(null=True)),
        migrator.add_column("api_token", "sandbox", BooleanField(default=False)),
        migrator.add_column("api_token", "last_used_ip", CharField(max_length=64, null=True)),
        migrator.add_column("api_token", "last_used_via", CharField(max_length=8, null=True)),
    )

    class Stub(Model):
        class Meta:
            database = db

    class ApiToken(Stub):
        class Meta:
            table_name = "api_token"

    class User(Stub):
        class Meta:
            table_name = "user"

    class KeyUsage(Stub):
        token = ForeignKeyField(ApiToken, on_delete="CASCADE")
        day = DateField()
        count = IntegerField(default=0)

        class Meta:
            table_name = "key_usage"
            indexes = ((("token", "day"), True),)

    class AuditEvent(Stub):
        user = ForeignKeyField(User, on_delete="CASCADE", null=True)
        token = ForeignKeyField(ApiToken, on_delete="SET NULL", null=True)
        key_prefix = CharField(max_length=16, default="")
        action = CharField(max_length=16)
        outcome = CharField(max_length=16)
        reason = CharField(max_length=64, default="")
        protocol = CharField(max_length=8)
        client_ip = CharField(max_length=64, default="")
        detail = TextField(default="")
        occurred_at = DateTimeField(index=True)

        class Meta:
            table_name = "audit_event"
            indexes = ((("user", "id"), False),)

    db.create_tables([KeyUsage, AuditEvent])


def down(migrator, db):
    db.execute_sql("DROP TABLE IF EXISTS audit_event")
    db.execute_sql("DROP TABLE IF EXISTS key_usage")
    migrator.migrate(*(migrator.drop_column("api_token", name) for name in (
        "last_used_via", "last_used_ip", "sandbox", "daily_limit", "expires_at", "permissions", "inbox_ids")))
