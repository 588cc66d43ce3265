import json

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
                                          "0004_domain_claims", "0005_user_session_epoch",
                                          "0006_api_key_scopes", "0007_recipient_safety", "0008_events_webhooks",
                                          "0010_message_flags", "0011_imap_uids"]
        columns = {c.name for c in models.db.get_columns("outbound_email")}
        assert {"idempotency_key", "request_hash"} <= columns
        assert models.User.get(models.User.email == "old@example.com").plan == "free"
        assert models.User.get(models.User.email == "old@example.com").session_epoch == 0
        assert models.migrate_schema() == []
        assert all(m.applied for m in models.schema_status())


def test_migration_0007_records_earlier_recipients_as_known(account):
    """Deploying the first-contact cap must not block an inbox's regulars: the recipients of its
    earlier sends become known recipients."""
    with models.db.connection_context():
        runner = Runner(models.db.obj, str(models.MIGRATIONS_DIR))
        runner.down("0007_recipient_safety")
        assert "known_recipient" not in models.db.get_tables()
        p = models.db.obj.param
        models.db.execute_sql(
            "INSERT INTO outbound_email (public_id, user_id, inbox_id, via, mail_from, recipients, status, attempts, "
            f"created_at, updated_at) VALUES ({p}, {p}, {p}, 'api', {p}, {p}, 'sent', 1, {p}, {p})",
            ("ob_old1", account.user.id, account.inbox.id, account.address,
             json.dumps(["Bob+news@Example.com", "carol@example.com", "bob@example.com"]),
             "2026-01-01 00:00:00", "2026-01-01 00:00:00"))
        assert models.migrate_schema() == ["0007_recipient_safety", "0008_events_webhooks",
                                          "0010_message_flags", "0011_imap_uids"]  # down() took the later ones too
        known = {k.address for k in models.KnownRecipient.select()}
        assert known == {"bob@example.com", "carol@example.com"}
        inbox = models.Inbox.get_by_id(account.inbox.id)
        assert (inbox.paused_at, inbox.new_recipients_per_day) == (None, None)


def test_migration_0011_keeps_existing_uids_and_starts_the_counter_above_them(account):
    """Messages stored before IMAP UIDs had their own column keep the UID they had (their id), so
    clients' caches and UIDVALIDITY stay valid; the next UID is above every one of them."""
    with models.db.connection_context():
        runner = Runner(models.db.obj, str(models.MIGRATIONS_DIR))
        runner.down("0011_imap_uids")
        assert "imap_uid" not in {c.name for c in models.db.get_columns("message")}
        p = models.db.obj.param
        for n in range(3):
            models.db.execute_sql(
                "INSERT INTO message (inbox_id, folder, message_id, subject, from_addr, to_addrs, size, blob_key, "
                f"created_at) VALUES ({p}, 'sent', {p}, '', '', '', 1, {p}, '2026-01-01 00:00:00')",
                (account.inbox.id, f"<old{n}@x>", f"old/{n}"))
        assert models.migrate_schema() == ["0011_imap_uids"]
        rows = list(models.Message.select().order_by(models.Message.id))
        assert [r.imap_uid for r in rows] == [r.id for r in rows] and len(rows) == 3
        with models.db.atomic():
            assert models.next_imap_uid(account.inbox.id) == rows[-1].id + 1
