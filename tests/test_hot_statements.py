"""The statements SMTP runs for every message are prepared once per Postgres connection
(models.HotStatement) and answer exactly what their plain SQL answers; elsewhere the plain SQL runs."""
import uuid

import psycopg2
import pytest

import models
import settings
from core import outbound  # noqa: F401  (registers the relay's statements)
from core import recipients
from tests.conftest import PG_ADMIN_DSN
from tests.conftest import _admin_sql
from tests.helpers import make_account

HOT = {"inboxlayer_sender_state", "inboxlayer_record_submission", "inboxlayer_recipient_state",
       "inboxlayer_relay_claim", "inboxlayer_relay_record_sent"}


def test_hot_statements_are_prepared_and_answer_as_the_plain_sql(config, db_backend):
    account = make_account()
    day = models.today().isoformat()
    with models.db.connection_context():
        state = models.sender_state(account.address, account.token_row.id)
        plain = models.db.execute_sql(models._SENDER_STATE.sql.format(p=models.db.obj.param),
                                      (account.token_row.id, day, day, account.address)).fetchone()
        assert state == plain and state is not None
        assert state[0] == account.user.plan
        assert models.sender_state(account.address, account.token_row.id + 1000) is None  # not this inbox's key
        assert recipients.check_recipient(account.user, account.inbox, "first@example.com") is True
        if db_backend == "postgres":
            names = {row[0] for row in models.db.execute_sql("SELECT name FROM pg_prepared_statements")}
            assert HOT <= names
            plans = models.db.execute_sql(
                "SELECT generic_plans + custom_plans FROM pg_prepared_statements WHERE name = %s",
                ("inboxlayer_sender_state",)).fetchone()[0]
            assert plans >= 2  # the two sender_state calls above ran the prepared statement


def test_a_connection_to_a_database_without_the_tables_runs_the_plain_sql():
    name = f"inboxlayer_empty_{uuid.uuid4().hex[:8]}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    try:
        params = dict(p.split("=", 1) for p in PG_ADMIN_DSN.split())
        conn = psycopg2.connect(PG_ADMIN_DSN.replace(f"dbname={params['dbname']}", f"dbname={name}"))
        conn.autocommit = True
        try:
            assert models.HotStatement.prepare_all(conn) == frozenset()
            with conn.cursor() as cursor:  # the failed PREPAREs left the connection usable
                cursor.execute("SELECT 1")
                assert cursor.fetchone() == (1,)
        finally:
            conn.close()
    finally:
        _admin_sql(f'DROP DATABASE IF EXISTS "{name}"')


def test_compiled_select_answers_as_peewee_first_joins_included(config):
    account = make_account()
    with models.db.connection_context():
        domain = models.Domain.create(user=account.user, name="agents.example", status="verified",
                                       verification_token="t0k3n")
        inbox = models.Inbox.create(user=account.user, local_part="bot", address="bot@agents.example", domain=domain)
        select = models.CompiledSelect(lambda address: models.Inbox.select(models.Inbox, models.Domain).join(
            models.Domain).where(models.Inbox.address == address))
        for address in ("bot@agents.example", "bot@agents.example", "nobody@agents.example"):
            ours = select.first(address)
            theirs = (models.Inbox.select(models.Inbox, models.Domain).join(models.Domain)
                      .where(models.Inbox.address == address).first())
            assert (ours is None) == (theirs is None)
            if ours is not None:
                assert ours.__data__ == theirs.__data__ and ours.id == inbox.id
                assert ours.domain.__data__ == theirs.domain.__data__ and ours.domain.name == "agents.example"
        token = models.live_token_by_hash(account.token_row.token_hash)
        assert (token.id, token.user.email) == (account.token_row.id, account.user.email)


@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
def test_prepare_statements_false_prepares_nothing_and_runs_the_plain_sql(config, pg_url):
    """Behind a transaction-pooling proxy the next transaction may reach another server
    connection, where a prepared statement is not: database.prepare_statements = false."""
    account = make_account()
    view = settings.view(settings.load_config(environ={"DATABASE_URL": pg_url,
                                                         "INBOXLAYER_DATABASE_PREPARE_STATEMENTS": "false"}))
    assert view.database.prepare_statements is False
    models.db.obj.close_all()
    models.init_database(pg_url, prepare=view.database.prepare_statements)
    with models.db.connection_context():
        assert models.db.execute_sql("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert models.sender_state(account.address, account.token_row.id)[0] == account.user.plan
