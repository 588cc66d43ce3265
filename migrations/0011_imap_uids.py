"""IMAP UIDs in commit order (issue 16): Message.imap_uid, taken from a per-inbox counter
(imap_uid_counter) in the transaction that stores the message, instead of the row id (which
Postgres hands out at INSERT, so two sends could become visible in the opposite order).

Existing messages keep the UID they had (their id), so clients keep their caches and UIDVALIDITY
stays; each inbox's counter starts at its highest id, so the next UID is above every earlier one."""
from peewee import BigIntegerField
from peewee import ForeignKeyField
from peewee import Model


def _tables(db):
    class Inbox(Model):
        class Meta:
            database = db
            table_name = "inbox"

    class ImapUidCounter(Model):
        inbox = ForeignKeyField(Inbox, primary_key=True, on_delete="CASCADE")
        last_uid = BigIntegerField()

        class Meta:
            database = db
            table_name = "imap_uid_counter"

    return ImapUidCounter


def up(migrator, db):
    migrator.migrate(migrator.add_column("message", "imap_uid", BigIntegerField(null=True)))
    db.execute_sql("UPDATE message SET imap_uid = id")
    migrator.migrate(
        migrator.add_not_null("message", "imap_uid"),
        migrator.add_index("message", ("inbox_id", "folder", "imap_uid"), True),
    )
    db.create_tables([_tables(db)], safe=True)
    db.execute_sql("INSERT INTO imap_uid_counter (inbox_id, last_uid) "
                   "SELECT inbox_id, MAX(id) FROM message GROUP BY inbox_id")


def down(migrator, db):
    db.drop_tables([_tables(db)], safe=True)
    migrator.migrate(
        migrator.drop_index("message", "message_inbox_id_folder_imap_uid"),
        migrator.drop_column("message", "imap_uid"),
    )
