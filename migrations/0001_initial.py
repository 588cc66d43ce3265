"""Initial schema (frozen copy of the models as of the first release)."""
from peewee import *


def up(migrator, db):
    class User(Model):
        email = CharField(unique=True, max_length=254)
        password_hash = CharField()
        plan = CharField(max_length=32, default='free')
        created_at = DateTimeField()
        class Meta:
            database = db
            table_name = 'user'
    db.create_tables([User])

    class ApiToken(Model):
        user = ForeignKeyField(User, on_delete='CASCADE')
        name = CharField(max_length=100)
        prefix = CharField(max_length=16)
        token_hash = CharField(unique=True, max_length=64)
        created_at = DateTimeField()
        last_used_at = DateTimeField(null=True)
        revoked_at = DateTimeField(null=True)
        class Meta:
            database = db
            table_name = 'api_token'
    db.create_tables([ApiToken])

    class Domain(Model):
        user = ForeignKeyField(User, on_delete='CASCADE')
        name = CharField(unique=True, max_length=253)
        status = CharField(max_length=16, default='pending')
        verification_token = CharField(max_length=64)
        dkim_tokens = TextField(default='[]')
        created_at = DateTimeField()
        verified_at = DateTimeField(null=True)
        last_checked_at = DateTimeField(null=True)
        last_error = TextField(null=True)
        class Meta:
            database = db
            table_name = 'domain'
    db.create_tables([Domain])

    class Inbox(Model):
        user = ForeignKeyField(User, on_delete='CASCADE')
        local_part = CharField(max_length=64)
        domain = ForeignKeyField(Domain, null=True, on_delete='CASCADE')
        address = CharField(unique=True, max_length=320)
        display_name = CharField(max_length=100, default='')
        created_at = DateTimeField()
        class Meta:
            database = db
            table_name = 'inbox'
    db.create_tables([Inbox])

    class Message(Model):
        inbox = ForeignKeyField(Inbox, on_delete='CASCADE')
        folder = CharField(max_length=16, default='sent')
        message_id = CharField(max_length=998)
        subject = TextField(default='')
        from_addr = TextField(default='')
        to_addrs = TextField(default='')
        size = BigIntegerField()
        blob_key = CharField()
        created_at = DateTimeField(index=True)
        class Meta:
            database = db
            table_name = 'message'
    db.create_tables([Message])

    class OutboundEmail(Model):
        public_id = CharField(unique=True, max_length=40)
        user = ForeignKeyField(User, on_delete='CASCADE')
        inbox = ForeignKeyField(Inbox, on_delete='CASCADE')
        message = ForeignKeyField(Message, null=True, on_delete='SET NULL')
        via = CharField(max_length=8)
        mail_from = CharField(max_length=320)
        recipients = TextField()
        status = CharField(index=True, max_length=16, default='queued')
        ses_message_id = CharField(unique=True, null=True, max_length=128)
        attempts = IntegerField(default=0)
        last_error = TextField(null=True)
        created_at = DateTimeField(index=True)
        updated_at = DateTimeField(index=True)
        sent_at = DateTimeField(null=True)
        completed_at = DateTimeField(null=True)
        next_attempt_at = DateTimeField(null=True)
        class Meta:
            database = db
            table_name = 'outbound_email'
    db.create_tables([OutboundEmail])

    class OutboundEvent(Model):
        outbound = ForeignKeyField(OutboundEmail, on_delete='CASCADE')
        type = CharField(max_length=32)
        detail = TextField(default='{}')
        occurred_at = DateTimeField(index=True)
        dedupe_key = CharField(unique=True, null=True)
        class Meta:
            database = db
            table_name = 'outbound_event'
    db.create_tables([OutboundEvent])

    class SendUsage(Model):
        user = ForeignKeyField(User, on_delete='CASCADE')
        day = DateField()
        count = IntegerField(default=0)
        class Meta:
            database = db
            table_name = 'send_usage'
            indexes = ((('user', 'day'), True),)
    db.create_tables([SendUsage])


def down(migrator, db):
    migrator.migrate(migrator.drop_table('send_usage'))
    migrator.migrate(migrator.drop_table('outbound_event'))
    migrator.migrate(migrator.drop_table('outbound_email'))
    migrator.migrate(migrator.drop_table('message'))
    migrator.migrate(migrator.drop_table('inbox'))
    migrator.migrate(migrator.drop_table('domain'))
    migrator.migrate(migrator.drop_table('api_token'))
    migrator.migrate(migrator.drop_table('user'))
