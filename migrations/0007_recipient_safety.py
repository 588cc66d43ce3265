"""Recipient safety (issue 14): a suppression list per account, an allow/block recipient policy and
a first-contact cap per inbox (its known recipients and a per-day counter of new ones), and the
inbox pause. Existing inboxes start unpaused with no policy and the plan's cap; their earlier
recipients are recorded as known, so the cap counts only addresses they have truly never mailed."""
import json

from peewee import CharField
from peewee import DateField
from peewee import DateTimeField
from peewee import ForeignKeyField
from peewee import IntegerField
from peewee import Model
from peewee import TextField

BACKFILL_BATCH = 1000  # outbound rows read per query while recording known recipients


def up(migrator, db):
    class User(Model):
        class Meta:
            database = db
            table_name = "user"

    class Inbox(Model):
        class Meta:
            database = db
            table_name = "inbox"

    class Suppression(Model):
        user = ForeignKeyField(User, on_delete="CASCADE")
        address = CharField(max_length=320)  # the comparable key (core.recipients.address_key)
        original = CharField(max_length=320)  # as first given or reported
        source = CharField(max_length=16)  # bounce | complaint | manual
        reason = TextField()
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = "suppression"
            indexes = ((("user", "address"), True),)

    class RecipientRule(Model):
        inbox = ForeignKeyField(Inbox, on_delete="CASCADE")
        kind = CharField(max_length=8)  # allow | block
        pattern = CharField(max_length=320)
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = "recipient_rule"
            indexes = ((("inbox", "kind", "pattern"), True),)

    class KnownRecipient(Model):
        inbox = ForeignKeyField(Inbox, on_delete="CASCADE")
        address = CharField(max_length=320)
        first_at = DateTimeField()

        class Meta:
            database = db
            table_name = "known_recipient"
            indexes = ((("inbox", "address"), True),)

    class NewRecipientUsage(Model):
        inbox = ForeignKeyField(Inbox, on_delete="CASCADE")
        day = DateField()
        count = IntegerField(default=0)

        class Meta:
            database = db
            table_name = "new_recipient_usage"
            indexes = ((("inbox", "day"), True),)

    db.create_tables([Suppression, RecipientRule, KnownRecipient, NewRecipientUsage])
    migrator.migrate(
        migrator.add_column("inbox", "paused_at", DateTimeField(null=True)),
        migrator.add_column("inbox", "paused_reason", TextField(null=True)),
        migrator.add_column("inbox", "resumed_at", DateTimeField(null=True)),
        migrator.add_column("inbox", "new_recipients_per_day", IntegerField(null=True)),
    )
    _backfill_known(db)


def _backfill_known(db):
    """Every address an inbox has already sent to is known (so deploying the cap blocks no regulars)."""
    last = 0
    while True:
        rows = db.execute_sql(
            "SELECT id, inbox_id, recipients, created_at FROM outbound_email WHERE id > {p} ORDER BY id LIMIT {n}"
            .format(p=db.param, n=BACKFILL_BATCH), (last,)).fetchall()
        if not rows:
            return
        seen = set()
        for row_id, inbox_id, recipients, created_at in rows:
            last = row_id
            try:
                addresses = json.loads(recipients)
            except ValueError:
                continue
            for address in addresses if isinstance(addresses, list) else ():
                if isinstance(address, str) and "@" in address:
                    local, _, domain = address.strip().rpartition("@")
                    key = f"{local.lower().split('+', 1)[0]}@{domain.lower().rstrip('.')}"
                    if (inbox_id, key) not in seen:
                        seen.add((inbox_id, key))
                        db.execute_sql(
                            "INSERT INTO known_recipient (inbox_id, address, first_at) VALUES ({p}, {p}, {p}) "
                            "ON CONFLICT DO NOTHING".format(p=db.param), (inbox_id, key[:320], created_at))


def down(migrator, db):
    migrator.migrate(
        migrator.drop_column("inbox", "new_recipients_per_day"),
        migrator.drop_column("inbox", "resumed_at"),
        migrator.drop_column("inbox", "paused_reason"),
        migrator.drop_column("inbox", "paused_at"),
    )
    for table in ("new_recipient_usage", "known_recipient", "recipient_rule", "suppression"):
        db.execute_sql(f'DROP TABLE IF EXISTS "{table}"')
