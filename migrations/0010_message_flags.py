"""IMAP flags (\\Seen, \\Flagged) a mail client sets on a stored message: one row per message that
has any, in its own table, so the submit path's inserts (and its Postgres CTE) stay as they are.
A frozen copy of the model, like 0001."""
from peewee import BooleanField
from peewee import ForeignKeyField
from peewee import Model


def _tables(db):
    class Message(Model):
        class Meta:
            database = db
            table_name = "message"

    class MessageFlags(Model):
        message = ForeignKeyField(Message, unique=True, on_delete="CASCADE")
        seen = BooleanField(default=False)
        flagged = BooleanField(default=False)

        class Meta:
            database = db
            table_name = "message_flags"

    return MessageFlags


def up(migrator, db):
    db.create_tables([_tables(db)], safe=True)


def down(migrator, db):
    db.drop_tables([_tables(db)], safe=True)
