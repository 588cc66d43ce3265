"""REST API idempotency: remember the key and request hash of each API send."""
from peewee import CharField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("outbound_email", "idempotency_key", CharField(max_length=255, null=True)),
        migrator.add_column("outbound_email", "request_hash", CharField(max_length=64, null=True)),
        migrator.add_index("outbound_email", ("user_id", "idempotency_key"), True),
    )


def down(migrator, db):
    migrator.migrate(
        migrator.drop_index("outbound_email", "outbound_email_user_id_idempotency_key"),
        migrator.drop_column("outbound_email", "request_hash"),
        migrator.drop_column("outbound_email", "idempotency_key"),
    )
