"""Custom domains become claims: several accounts may hold a pending claim on one name, at most one
may hold it verified (a partial unique index), and each row records whether it created the SES
identity (so deleting a domain never deletes an identity someone else made) and since when a
verified domain has been failing its re-check (the grace before it goes to failed)."""
from peewee import BooleanField
from peewee import DateTimeField


def up(migrator, db):
    migrator.migrate(
        migrator.drop_index("domain", "domain_name"),
        # Rows from before this migration: unknown who created the identity, so never delete it.
        migrator.add_column("domain", "ses_identity_created", BooleanField(default=False)),
        migrator.add_column("domain", "failing_since", DateTimeField(null=True)),
        migrator.add_index("domain", ("user_id", "name"), True),
        migrator.add_index("domain", ("name",), False),
    )
    db.execute_sql("CREATE UNIQUE INDEX domain_name_verified ON domain (name) WHERE status = 'verified'")


def down(migrator, db):
    db.execute_sql("DROP INDEX domain_name_verified")
    migrator.migrate(
        migrator.drop_index("domain", "domain_name"),
        migrator.drop_index("domain", "domain_user_id_name"),
        migrator.drop_column("domain", "failing_since"),
        migrator.drop_column("domain", "ses_identity_created"),
        migrator.add_index("domain", ("name",), True),
    )
