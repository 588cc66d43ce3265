"""The real SMTP server (`inboxlayer smtpd` as a child process) with the real database, Redis
and blob store: what a client's 250 means, and each refusal of the reply table (docs/smtp.md)."""
import json
import re
import smtplib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import models
from core import accounts
from core import outbox
from tests import smtp_codes as codes
from tests.fixtures_smtp import RawClient
from tests.fixtures_smtp import message
from tests.helpers import free_port
from tests.helpers import make_account


def queued_public_id(reply_text):
    match = re.fullmatch(r"2\.0\.0 OK queued as (ob_[0-9a-f]+)", reply_text)
    assert match, reply_text
    return match.group(1)


def assert_queued(public_id, account, recipients, subject="hello"):
    """The message is durable: Sent copy + OutboundEmail(queued) + event, blob stored, job queued."""
    with models.db.connection_context():
        outbound = models.OutboundEmail.get(models.OutboundEmail.public_id == public_id)
        sent = outbound.message
        events = [e.type for e in outbound.events]
    assert (outbound.status, outbound.via, outbound.inbox_id) == ("queued", "smtp", account.inbox.id)
    assert json.loads(outbound.recipients) == recipients
    assert (sent.folder, sent.subject, sent.inbox_id) == ("sent", subject, account.inbox.id)
    assert events == ["queued"]
    from core import blobs

    assert blobs.store().read_bytes(sent.blob_key).count(f"Subject: {subject}".encode()) == 1
    assert outbox.relay_job_id(outbound.id) in outbox.relay_queue().job_ids
    return outbound


def counts():
    with models.db.connection_context():
        return (models.OutboundEmail.select().count(), models.Message.select().count(),
                sum(u.count for u in models.SendUsage.select()))


def set_usage(user, count):
    with models.db.connection_context():
        models.SendUsage.insert(user=user, day=models.today(), count=count).on_conflict(
            conflict_target=[models.SendUsage.user, models.SendUsage.day],
            update={models.SendUsage.count: count}).execute()


def send(client, account, to=("someone@example.com",), data=None):
    client.mail(account.address)
    for rcpt in to:
        client.rcpt(rcpt)
    return client.data(data or message(account.address))


# -- accepted: smtplib and swaks, both ports, both mechanisms -----------------------------------------

@pytest.mark.parametrize("port, mechanism", [("starttls", "PLAIN"), ("starttls", "LOGIN"), ("tls", "PLAIN"),
                                             ("tls", "LOGIN")])
def test_smtplib_message_queued(smtp_client, account, port, mechanism):
    client = smtp_client(port=port)
    client.user, client.password = account.address, account.token
    code, text = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
    assert f"{code} {text.decode()}" == codes.AUTH_OK
    recipients = ["someone@example.com", "Other@Example.org"]
    client.mail(account.address)
    for rcpt in recipients:
        assert client.rcpt(rcpt) == (250, b"2.1.5 OK")
    code, text = client.data(message(account.address, to=", ".join(recipients)))
    assert code == 250
    assert_queued(queued_public_id(text.decode()), account, recipients)


@pytest.mark.parametrize("tls_flag, port_attr, mechanism", [
    ("--tls", "starttls_port", "PLAIN"), ("--tls", "starttls_port", "LOGIN"),
    ("--tls-on-connect", "tls_port", "PLAIN"), ("--tls-on-connect", "tls_port", "LOGIN")])
def test_swaks_message_queued(smtp_server, account, tls_flag, port_attr, mechanism):
    result = subprocess.run(
        ["/usr/bin/swaks", "--server", smtp_server.host, "--port", str(getattr(smtp_server, port_attr)), tls_flag,
         "--tls-verify", "--tls-ca-path", str(smtp_server.cafile), "--auth", mechanism,
         "--auth-user", account.address, "--auth-password", account.token, "--from", account.address,
         "--to", "someone@example.com", "--header", "Subject: hello", "--body", "Sent by swaks."],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    replies = re.findall(r"^<~?  (250 2\.0\.0 OK queued as ob_[0-9a-f]+)$", result.stdout, re.M)
    assert len(replies) == 1, result.stdout
    assert_queued(queued_public_id(replies[0][4:]), account, ["someone@example.com"])


def test_plus_tag_sender_accepted(smtp_client, account):
    client = smtp_client(account.address, account.token)
    tagged = account.address.replace("@", "+news@")
    code, text = send(client, account, data=message(tagged))
    assert code == 250
    assert_queued(queued_public_id(text.decode()), account, ["someone@example.com"])


def test_message_of_25mb_accepted_and_stored(smtp_client, account):
    head = (f"From: {account.address}\r\nTo: someone@example.com\r\nSubject: big\r\n"
            f"Message-ID: <big@inboxlayer.dev>\r\nDate: Wed, 25 Nov 2026 08:00:00 +0000\r\n\r\n").encode()
    body_size = 26214400 - len(head)
    lines = (body_size - 2) // 1000
    data = head + (b"b" * 998 + b"\r\n") * lines + b"c" * (body_size - lines * 1000 - 2) + b"\r\n"
    assert len(data) == 26214400
    client = smtp_client(account.address, account.token)
    code, text = send(client, account, data=data)
    assert code == 250
    outbound = assert_queued(queued_public_id(text.decode()), account, ["someone@example.com"], subject="big")
    with models.db.connection_context():
        assert models.Message.get_by_id(outbound.message_id).size == 26214400


# -- the reply table (docs/smtp.md) -------------------------------------------------------------------

def login_reply(smtp_client, username, password, **kwargs):
    client = smtp_client(**kwargs)
    try:
        client.login(username, password)
    except smtplib.SMTPAuthenticationError as exc:
        return f"{exc.smtp_code} {exc.smtp_error.decode()}"
    return "235"


def test_auth_wrong_token_refused(smtp_client, account):
    assert login_reply(smtp_client, account.address, "il_not-a-real-token") == codes.AUTH_FAILED


def test_auth_revoked_token_refused(smtp_client, account):
    assert login_reply(smtp_client, account.address, account.token) == "235"
    with models.db.connection_context():
        assert accounts.revoke_token(account.user, account.token_row.id)
    assert login_reply(smtp_client, account.address, account.token) == codes.AUTH_FAILED


def test_revoked_token_stops_an_open_session_at_next_mail(smtp_client, account):
    client = smtp_client(account.address, account.token)
    with models.db.connection_context():
        accounts.revoke_token(account.user, account.token_row.id)
    assert client.mail(account.address) == (530, codes.AUTH_REQUIRED[4:].encode())


def test_auth_token_of_another_account_refused(smtp_client, account):
    other = make_account(email="other@example.com", local_part="other")
    assert login_reply(smtp_client, account.address, other.token) == codes.AUTH_FAILED
    assert login_reply(smtp_client, other.address, other.token) == "235"


def test_auth_username_not_an_inbox_refused(smtp_client, account):
    assert login_reply(smtp_client, "nobody@inboxlayer.dev", account.token) == codes.AUTH_FAILED


def test_mail_from_not_the_inbox_refused(smtp_client, account):
    client = smtp_client(account.address, account.token)
    assert client.mail("boss@inboxlayer.dev") == (550, codes.SENDER_NOT_OWNED[4:].encode())


def test_from_header_not_the_inbox_refused_and_nothing_stored(smtp_client, account):
    client = smtp_client(account.address, account.token)
    client.mail(account.address)
    client.rcpt("someone@example.com")
    assert client.data(message("boss@inboxlayer.dev")) == (550, codes.SENDER_NOT_OWNED[4:].encode())
    assert counts() == (0, 0, 0)


SPOOFED_FROM_HEADERS = [
    "From: agent@inboxlayer.dev <ceo@bank.example>",  # lenient parsers read agent@..., MUAs show ceo@...
    "From: <agent@inboxlayer.dev> ceo@bank.example",
    "From: agent@inboxlayer.dev\r\nFrom : ceo@bank.example",  # obsolete "From :" that Python skips
    "From: agent@inboxlayer.dev\r\nFROM\t: ceo@bank.example",
    "From: agent@inboxlayer.dev\r\nfrom: ceo@bank.example",
    "From: agent@inboxlayer.dev, ceo@bank.example",
    "From: ceo@bank.example (agent@inboxlayer.dev)",
    "From: team: agent@inboxlayer.dev;",  # a group is not one mailbox
]


def test_spoofed_from_header_variants_refused(smtp_client, account):
    client = smtp_client(account.address, account.token)
    for header in SPOOFED_FROM_HEADERS:
        client.mail(account.address)
        client.rcpt("someone@example.com")
        data = f"{header}\r\nTo: someone@example.com\r\nSubject: spoof\r\n\r\nbody\r\n".encode()
        assert client.data(data) == (550, codes.SENDER_NOT_OWNED[4:].encode()), header
    assert counts() == (0, 0, 0)
    # Display names and Reply-To are free; a Sender: must be the inbox too (test_smtp_headers.py).
    code, _ = send(client, account, data=b'From: "Agent, the bot" <Agent+x@InboxLayer.dev>\r\nSender: '
                   b'agent@inboxlayer.dev\r\nReply-To: boss@example.com\r\nSubject: hello\r\n\r\nok\r\n')
    assert code == 250


def custom_domain_inbox(account, status):
    """bot@example.com on a custom domain of ``account`` in ``status``."""
    with models.db.connection_context():
        domain = models.Domain.create(user=account.user, name="example.com", status=status, verification_token="t")
        return domain, accounts.create_inbox(account.user, "bot", domain)


def test_custom_domain_not_verified_refused_at_mail(smtp_client, account):
    _, inbox = custom_domain_inbox(account, "pending")
    client = smtp_client(inbox.address, account.token)
    assert client.mail(inbox.address) == (550, codes.domain_not_verified("example.com")[4:].encode())


def test_domain_verified_during_session_counts_from_next_mail(smtp_client, account):
    domain, inbox = custom_domain_inbox(account, "pending")
    client = smtp_client(inbox.address, account.token)
    assert client.mail(inbox.address) == (550, codes.domain_not_verified("example.com")[4:].encode())
    with models.db.connection_context():
        models.Domain.update(status="verified").where(models.Domain.id == domain.id).execute()
    assert client.mail(inbox.address) == (250, b"2.1.0 OK")


def test_custom_domain_verified_accepted(smtp_client, account):
    _, inbox = custom_domain_inbox(account, "verified")
    client = smtp_client(inbox.address, account.token)
    assert client.mail(inbox.address) == (250, b"2.1.0 OK")


def test_quota_reached_refused_at_rcpt_with_where_the_user_stands(smtp_client, account):
    set_usage(account.user, 499)
    client = smtp_client(account.address, account.token)
    client.mail(account.address)
    assert client.rcpt("one@example.com") == (250, b"2.1.5 OK")
    assert client.rcpt("two@example.com") == (550, codes.quota_exceeded(499, 500)[4:].encode())
    code, text = client.data(message(account.address))
    assert code == 250
    set_usage(account.user, 500)
    client.mail(account.address)
    assert client.rcpt("one@example.com") == (550, codes.quota_exceeded(500, 500)[4:].encode())


def test_rate_limit_refused_at_mail(start_smtp_server, account):
    server = start_smtp_server(INBOXLAYER_PLANS_FREE_SEND_RATE_PER_SECOND=1, INBOXLAYER_PLANS_FREE_SEND_BURST=2)
    client = RawClient(server)
    client.reply()
    client.starttls()
    client.cmd("EHLO client.example")
    assert client.login(account.address, account.token) == codes.AUTH_OK
    client.send(f"MAIL FROM:<{account.address}>\r\nRSET\r\n" * 3)
    replies = [client.reply() for _ in range(6)]
    assert replies == [codes.SENDER_OK, codes.OK, codes.SENDER_OK, codes.OK, codes.RATE_LIMITED, codes.OK]
    client.close()


def test_failed_auth_throttled_per_client_ip(smtp_server, smtp_client, account):
    client = RawClient(smtp_server)
    client.reply()
    client.starttls()
    client.cmd("EHLO attacker.example")
    replies = [client.login(account.address, f"il_wrong-{i}") for i in range(11)]
    assert replies == [codes.AUTH_FAILED] * 10 + [codes.AUTH_THROTTLED]
    assert client.is_closed()
    # The rest of the 20 attempts, on new connections, are refused at the greeting.
    for _ in range(9):
        again = RawClient(smtp_server)
        assert again.reply() == codes.AUTH_THROTTLED
        assert again.is_closed()
    # Throttled per IP, not per account: the inbox still works from another address.
    other = smtp_client(account.address, account.token, source_address=("127.0.0.2", 0))
    assert send(other, account)[0] == 250


def test_too_many_recipients_refused(smtp_client, account):
    client = smtp_client(account.address, account.token)
    client.mail(account.address)
    for i in range(100):
        assert client.rcpt(f"r{i}@example.com") == (250, b"2.1.5 OK")
    assert client.rcpt("r100@example.com") == (452, codes.TOO_MANY_RECIPIENTS[4:].encode())


def test_message_over_25mb_refused(smtp_client, account):
    client = smtp_client(account.address, account.token)
    client.mail(account.address)
    client.rcpt("someone@example.com")
    data = message(account.address) + b"x" * 998 + b"\r\n"
    data += (b"y" * 998 + b"\r\n") * (26214400 // 1000)
    assert client.data(data) == (552, codes.SIZE_EXCEEDED[4:].encode())
    assert counts() == (0, 0, 0)


# -- outages: 451 4.3.0 and nothing half-written -----------------------------------------------------------

def test_redis_down_refused_with_451(start_smtp_server, account):
    server = start_smtp_server(INBOXLAYER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = RawClient(server)
    client.reply()
    client.starttls()
    client.cmd("EHLO client.example")
    assert client.login(account.address, account.token) == codes.AUTH_OK
    assert client.cmd(f"MAIL FROM:<{account.address}>") == codes.TEMPORARY_ERROR
    assert client.cmd("NOOP") == codes.OK


def test_database_down_refused_with_451(start_smtp_server, account):
    server = start_smtp_server(INBOXLAYER_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    client = RawClient(server)
    client.reply()
    client.starttls()
    client.cmd("EHLO client.example")
    assert client.login(account.address, account.token) == codes.TEMPORARY_ERROR
    assert client.cmd("NOOP") == codes.OK


def test_blob_store_down_refused_with_451_and_nothing_written(start_smtp_server, account, tmp_path):
    not_a_directory = tmp_path / "blobs-is-a-file"
    not_a_directory.write_text("")
    server = start_smtp_server(INBOXLAYER_BLOBS_PATH=str(not_a_directory))
    client = RawClient(server)
    client.authenticate(account.address, account.token)
    client.start_data(account.address)
    client.send(message(account.address) + b".\r\n")
    assert client.reply() == codes.TEMPORARY_ERROR
    assert counts() == (0, 0, 0)
    assert outbox.relay_queue().job_ids == []


# -- concurrency ------------------------------------------------------------------------------------------

def test_quota_race_50_clients_never_exceed_it(smtp_server, account):
    pro = make_account(email="pro@example.com", local_part="pro", plan="pro")
    limit = 50000
    set_usage(pro.user, limit - 5)

    def one_client(i):
        from tests.fixtures_smtp import tls_context

        with smtplib.SMTP(smtp_server.host, smtp_server.starttls_port, timeout=60) as client:
            client.starttls(context=tls_context(smtp_server.cafile))
            client.login(pro.address, pro.token)
            try:
                client.sendmail(pro.address, [f"r{i}@example.com"], message(pro.address, subject=f"race {i}"))
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as exc:
                return str(exc)
            return "250"

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one_client, range(50)))
    assert results.count("250") == 5
    assert all("5.4.5 Daily sending quota exceeded" in r for r in results if r != "250")
    with models.db.connection_context():
        assert models.sends_today(pro.user) == limit
        assert models.OutboundEmail.select().where(models.OutboundEmail.user == pro.user.id).count() == 5
    assert len(outbox.relay_queue().job_ids) == 5


def test_server_log_has_no_tracebacks(smtp_client, smtp_server, account):
    client = smtp_client(account.address, account.token)
    send(client, account)
    client.quit()
    assert "Traceback" not in Path(smtp_server.log_path).read_text()
