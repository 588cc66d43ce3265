import threading

import pytest

import models
from core import accounts
from tests.helpers import make_account


def test_token_created_shown_once_and_looked_up_by_hash(account):
    with models.db.connection_context():
        row = models.ApiToken.get_by_id(account.token_row.id)
        assert row.token_hash == accounts.hash_token(account.token)
        assert account.token not in (row.token_hash, row.prefix)
        assert account.token.startswith(row.prefix) and len(row.prefix) == accounts.TOKEN_PREFIX_SHOWN
        assert row.last_used_at is None
        found = accounts.lookup_token(account.token)
        assert found.id == row.id and found.user.id == account.user.id
        assert models.ApiToken.get_by_id(row.id).last_used_at is not None
        assert accounts.lookup_token(account.token[:-1] + ("A" if account.token[-1] != "A" else "B")) is None
        assert accounts.lookup_token("") is None
        assert accounts.lookup_token("not-a-token") is None


def test_token_revoked_is_refused_on_next_lookup(account):
    with models.db.connection_context():
        assert accounts.lookup_token(account.token) is not None
        assert accounts.revoke_token(account.user, account.token_row.id) is True
        assert accounts.lookup_token(account.token) is None
        assert accounts.revoke_token(account.user, account.token_row.id) is False


def test_token_revoke_other_users_token_refused(account):
    other = make_account(email="other@example.com", local_part="other")
    with models.db.connection_context():
        assert accounts.revoke_token(other.user, account.token_row.id) is False
        assert accounts.lookup_token(account.token) is not None


@pytest.mark.parametrize("raw, expected", [
    ("Agent@InboxLayer.DEV", "agent@inboxlayer.dev"),
    (" a.b@example.com ", "a.b@example.com"),
    ("x@bücher.example", "x@xn--bcher-kva.example"),
])
def test_address_normalised(raw, expected):
    assert models.normalize_address(raw) == expected


@pytest.mark.parametrize("raw", ["", "no-at", "a@@b.c", "@b.c", "a@", "a@nodot", "a@-bad.com", "a@b..c",
                                 "x" * 65 + "@b.co"])
def test_address_invalid_refused(raw):
    with pytest.raises(models.AddressError):
        models.normalize_address(raw)


@pytest.mark.parametrize("raw, expected", [
    ("Agent+tag@InboxLayer.dev", "agent@inboxlayer.dev"),
    ("agent@inboxlayer.dev.", "agent@inboxlayer.dev"),
])
def test_sender_key_drops_tag_and_case(raw, expected):
    assert models.sender_key(raw) == expected


def test_inbox_address_unique_case_insensitive(account, config):
    with models.db.connection_context():
        with pytest.raises(accounts.InboxExists):
            accounts.create_inbox(account.user, "AGENT", None, config["server"]["default_domain"])
        for bad in ["", "a b", "-x", "x.", "a..b", "é", "x" * 65]:
            with pytest.raises(models.AddressError):
                accounts.create_inbox(account.user, bad, None, config["server"]["default_domain"])


def test_custom_domain_inbox_cannot_send_until_verified(account):
    with models.db.connection_context():
        domain = models.Domain.create(user=account.user, name="example.org", verification_token="t")
        inbox = accounts.create_inbox(account.user, "bot", domain)
        assert inbox.address == "bot@example.org"
        assert models.inbox_can_send(inbox) == (False, "Domain example.org is not verified")
        models.Domain.update(status="verified").where(models.Domain.id == domain.id).execute()
        assert models.inbox_can_send(models.Inbox.get_by_id(inbox.id)) == (True, None)


def test_reserve_send_refuses_past_limit(account):
    with models.db.connection_context():
        assert models.reserve_send(account.user, 3, 5) is True
        assert models.reserve_send(account.user, 3, 5) is False
        assert models.reserve_send(account.user, 2, 5) is True
        assert models.sends_today(account.user) == 5


def test_reserve_send_rolled_back_with_its_transaction(account):
    """submit() reserves inside the transaction that stores the message: a failed commit gives it back."""
    with models.db.connection_context():
        assert models.reserve_send(account.user, 2, 5) is True
        with pytest.raises(RuntimeError), models.db.atomic():
            assert models.reserve_send(account.user, 3, 5) is True
            assert models.sends_today(account.user) == 5
            raise RuntimeError("commit never happens")
        assert models.sends_today(account.user) == 2


def test_reserve_send_50_concurrent_reservers_never_exceed_limit(account):
    limit, reservers = 20, 50
    barrier = threading.Barrier(reservers)
    results = []
    lock = threading.Lock()

    def reserve():
        with models.db.connection_context():
            barrier.wait()
            ok = models.reserve_send(account.user, 1, limit)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=reserve) for _ in range(reservers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == limit
    assert results.count(False) == reservers - limit
    with models.db.connection_context():
        assert models.sends_today(account.user) == limit


@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
def test_pool_pings_only_connections_that_rested(config, monkeypatch):
    """models.PostgresPool: a connection checked in a moment ago is handed out without peewee's
    SELECT 1; one that rested RECHECK_AFTER is pinged, and if its backend died, replaced."""
    import psycopg2

    database = models.db.obj
    assert isinstance(database, models.PostgresPool)
    pings = []
    ping = database._adapter.is_connection_closed
    monkeypatch.setattr(database._adapter, "is_connection_closed", lambda conn: pings.append(conn) or ping(conn))
    with models.db.connection_context():
        pid = models.db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    pings.clear()
    for _ in range(5):
        with models.db.connection_context():
            assert models.db.execute_sql("SELECT pg_backend_pid()").fetchone()[0] == pid
    assert pings == []
    admin = psycopg2.connect(config["database"]["url"])
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    admin.close()
    monkeypatch.setattr(models.PostgresPool, "RECHECK_AFTER", 0.0)  # as if it had rested
    with models.db.connection_context():
        assert models.db.execute_sql("SELECT pg_backend_pid()").fetchone()[0] != pid
    assert len(pings) >= 1
