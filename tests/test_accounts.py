"""core/accounts, core/submit's replay rule and core/mailview: the operations every front-end
shares, called directly on the real database and blob store (nothing mocked)."""
import io
from email.message import EmailMessage

import pytest
from werkzeug.security import check_password_hash

import models
from core import accounts
from core import blobs
from core import errors
from core import mailview
from core import submit


def store_message(account, text="Plain body\n", charset=None):
    """A message through the one submit path, as SMTP and REST store it."""
    msg = EmailMessage()
    msg["From"] = account.address
    msg["To"] = "someone@example.net"
    msg["Subject"] = "Hello"
    msg.set_content(text)
    raw = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if charset is not None:
        raw = raw.replace(b'charset="utf-8"', f'charset="{charset}"'.encode())
    with models.db.connection_context():
        return submit.submit(account.user, account.inbox, account.address, ["someone@example.net"],
                             io.BytesIO(raw), "smtp")


# -- users ----------------------------------------------------------------------------------------

def test_create_user_normalizes_email_and_hashes_password(config):
    with models.db.connection_context():
        user = accounts.create_user("New.Owner@Example.COM", "long enough password", "free")
        stored = models.User.get_by_id(user.id)
    assert (stored.email, stored.plan) == ("new.owner@example.com", "free")
    assert stored.password_hash != "long enough password"
    assert check_password_hash(stored.password_hash, "long enough password") is True


def test_create_user_same_address_twice_is_account_exists(config):
    with models.db.connection_context():
        accounts.create_user("owner@example.com", "long enough password", "free")
        with pytest.raises(accounts.AccountExists):
            accounts.create_user("OWNER@example.com", "another password", "free")
        assert models.User.select().where(models.User.email == "owner@example.com").count() == 1


@pytest.mark.parametrize("email, password, refusal", [
    ("not-an-address", "long enough password", accounts.InvalidEmail),
    ("owner@example.com", "short", accounts.WeakPassword),
])
def test_create_user_bad_input_is_refused(config, email, password, refusal):
    with models.db.connection_context():
        with pytest.raises(refusal):
            accounts.create_user(email, password, "free")
        assert models.User.select().count() == 0


# -- inboxes --------------------------------------------------------------------------------------

def test_create_inbox_taken_address_is_inbox_exists(account, config):
    with models.db.connection_context():
        with pytest.raises(accounts.InboxExists) as refused:
            accounts.create_inbox(account.user, " Agent ", None, config["server"]["default_domain"])
    assert refused.value.address == account.address


def test_create_inbox_plan_cap_counts_under_lock(account, config):
    with models.db.connection_context():
        accounts.create_inbox(account.user, "second", None, config["server"]["default_domain"], max_inboxes=2)
        with pytest.raises(accounts.InboxLimitReached):
            accounts.create_inbox(account.user, "third", None, config["server"]["default_domain"], max_inboxes=2)
        assert models.Inbox.select().where(models.Inbox.user == account.user).count() == 2


def test_delete_inbox_with_message_in_flight_is_busy(account, config):
    store_message(account)
    with models.db.connection_context():
        with pytest.raises(accounts.InboxBusy) as refused:
            accounts.delete_inbox(account.inbox)
        assert models.Inbox.get_or_none(models.Inbox.id == account.inbox.id) is not None
    assert refused.value.in_flight == 1


def test_delete_inbox_removes_rows_and_stored_files(account, config):
    outbound = store_message(account)
    with models.db.connection_context():
        message = models.Message.get(models.Message.inbox == account.inbox)
        models.OutboundEmail.update(status="delivered").where(models.OutboundEmail.id == outbound.id).execute()
    assert blobs.store().read_bytes(message.blob_key).endswith(b"\r\n\r\nPlain body\r\n")
    with models.db.connection_context():
        accounts.delete_inbox(account.inbox)
        assert models.Inbox.get_or_none(models.Inbox.id == account.inbox.id) is None
        assert models.Message.select().where(models.Message.inbox == account.inbox.id).count() == 0
        assert models.OutboundEmail.select().where(models.OutboundEmail.inbox == account.inbox.id).count() == 0
        assert models.OutboundEvent.select().where(models.OutboundEvent.outbound == outbound.id).count() == 0
    with pytest.raises(blobs.BlobError):
        blobs.store().read_bytes(message.blob_key)


# -- idempotent replay ----------------------------------------------------------------------------

def test_earlier_send_replays_same_request_and_refuses_another(account, config):
    with models.db.connection_context():
        assert submit.earlier_send(account.user, "key-1", "hash-a") is None
        models.OutboundEmail.create(public_id="ob_test", user=account.user, inbox=account.inbox, via="api",
                                    mail_from=account.address, recipients="[]", idempotency_key="key-1",
                                    request_hash="hash-a")
        assert submit.earlier_send(account.user, "key-1", "hash-a").public_id == "ob_test"
        with pytest.raises(errors.IdempotencyConflict):
            submit.earlier_send(account.user, "key-1", "hash-b")


# -- stored-message view: one cap for the Sent page and the API -----------------------------------

def test_mailview_long_text_cut_at_one_cap_for_page_and_api(account, config):
    store_message(account, text="x" * (mailview.MAX_BODY_CHARS + 10) + "\n")
    with models.db.connection_context():
        key = models.Message.get(models.Message.inbox == account.inbox).blob_key
    with blobs.store().open(key) as f:
        parsed = mailview.parse(f)
    api_text = mailview.content(parsed)["text"]
    assert len(api_text) == mailview.MAX_BODY_CHARS
    assert mailview.text_body(parsed) == api_text + mailview.TRUNCATED_NOTE


def test_mailview_unknown_charset_text_shown_not_dropped(account, config):
    store_message(account, text="plain part\n", charset="x-no-such-charset")
    with models.db.connection_context():
        key = models.Message.get(models.Message.inbox == account.inbox).blob_key
    with blobs.store().open(key) as f:
        parsed = mailview.parse(f)
    assert mailview.content(parsed)["text"].replace("\r\n", "\n") == "plain part\n"
    assert mailview.text_body(parsed).replace("\r\n", "\n") == "plain part\n"
