from playhouse.migrations import Runner

import models


def test_migrations_upgrade_an_older_schema_keeps_data(config):
    """Roll back to the first release's schema, store data in it, then upgrade to the current one."""
    with models.db.connection_context():
        runner = Runner(models.db.obj, str(models.MIGRATIONS_DIR))
        runner.down("0002_idempotency_keys")
        columns = {c.name for c in models.db.get_columns("outbound_email")}
        assert "idempotency_key" not in columns
        models.db.execute_sql(
            "INSERT INTO \"user\" (email, password_hash, plan, created_at) VALUES ('old@example.com', 'h', 'free', "
            "'2026-01-01 00:00:00')")
        assert models.migrate_schema() == ["0002_idempotency_keys", "0003_message_blob_key_index",
                                          "0004_domain_claims", "0005_user_session_epoch"]
        columns = {c.name for c in models.db.get_columns("outbound_email")}
        assert {"idempotency_key", "request_hash"} <= columns
        assert models.User.get(models.User.email == "old@example.com").plan == "free"
        assert models.User.get(models.User.email == "old@example.com").session_epoch == 0
        assert models.migrate_schema() == []
        assert all(m.applied for m in models.schema_status())
