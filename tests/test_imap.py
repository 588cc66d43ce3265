"""IMAP over real sockets against the real `inboxlayer imapd` process: python's imaplib (implicit
TLS and STARTTLS), curl, and a Debian mail program (mbsync) read the Sent folder of messages sent
over SMTP and the REST API; the bytes they fetch equal the stored copy."""
import base64
import calendar
import imaplib
import re
import shutil
import subprocess
import time
from email.message import EmailMessage

import pytest

import models
from core import accounts
from core import blobs
from tests.fixtures_api import ApiSession
from tests.fixtures_api import send_body
from tests.helpers import make_account
from tests.helpers import wait_until


def stored_copies(address):
    """{uid: bytes} of the inbox's Sent copies, read from the blob store."""
    with models.db.connection_context():
        rows = list(models.Message.select().join(models.Inbox).where(models.Inbox.address == address)
                    .order_by(models.Message.id))
    return {row.id: blobs.store().read_bytes(row.blob_key) for row in rows}


def smtp_message(account, subject, body="Hello over SMTP\r\n", attachment=None):
    message = EmailMessage()
    message["From"] = f"Agent <{account.address}>"
    message["To"] = "Bob <bob@example.com>"
    message["Cc"] = "carol@example.com"
    message["Subject"] = subject
    message.set_content(body)
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="data.bin")
    return message


@pytest.fixture
def sent(account, smtp_client, api_server):
    """Two messages in the account's Sent folder: one over SMTP (with an attachment), one over REST."""
    client = smtp_client(account.address, account.token)
    client.send_message(smtp_message(account, "Over SMTP", attachment=b"\x00\x01binary" * 100))
    with ApiSession(api_server, account.token) as api:
        response = api.post(f"/v1/inboxes/{account.address}/send", json=send_body(subject="Over REST"))
        assert response.status_code == 202, response.text
    copies = stored_copies(account.address)
    assert len(copies) == 2
    return copies


def test_imap_sent_folder_reads_the_stored_bytes_over_tls(account, sent, imap_client):
    client = imap_client(account.address, account.token)
    typ, listing = client.list()
    assert typ == "OK"
    assert listing == [b'(\\HasNoChildren) "/" INBOX', b'(\\HasNoChildren \\Sent) "/" Sent']
    typ, data = client.select("Sent")
    assert (typ, data) == ("OK", [b"2"])
    uids = list(sent)
    typ, data = client.uid("SEARCH", None, "ALL")
    assert [int(u) for u in data[0].split()] == uids
    for uid, stored in sent.items():
        typ, data = client.uid("FETCH", str(uid), "(RFC822.SIZE BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][1] == stored
        assert f"RFC822.SIZE {len(stored)}".encode() in data[0][0]
    smtp_uid, rest_uid = uids
    typ, data = client.uid("FETCH", str(smtp_uid), "(ENVELOPE BODYSTRUCTURE INTERNALDATE FLAGS)")
    response = data[0] if isinstance(data[0], bytes) else b"".join(p if isinstance(p, bytes) else p[0] + p[1]
                                                                     for p in data)
    assert b'"Over SMTP"' in response
    assert b'(("Agent" NIL "agent" "inboxlayer.dev"))' in response
    assert b'(("Bob" NIL "bob" "example.com"))' in response
    assert b'("APPLICATION" "OCTET-STREAM" ' in response
    assert b'"MIXED"' in response
    assert b"FLAGS ()" in response
    assert re.search(rb'INTERNALDATE "\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d \+0000"', response)
    # Sections: the header, a header subset, the text, a MIME part and a partial.
    stored = sent[smtp_uid]
    header_end = stored.index(b"\r\n\r\n") + 4
    typ, data = client.uid("FETCH", str(smtp_uid), "(BODY.PEEK[HEADER])")
    assert data[0][1] == stored[:header_end]
    typ, data = client.uid("FETCH", str(smtp_uid), "(BODY.PEEK[TEXT])")
    assert data[0][1] == stored[header_end:]
    typ, data = client.uid("FETCH", str(smtp_uid), "(BODY.PEEK[HEADER.FIELDS (SUBJECT TO)])")
    assert data[0][1] == b"To: Bob <bob@example.com>\r\nSubject: Over SMTP\r\n\r\n"
    typ, data = client.uid("FETCH", str(smtp_uid), "(BODY.PEEK[]<10.20>)")
    assert data[0][1] == stored[10:30]
    typ, data = client.uid("FETCH", str(smtp_uid), "(BODY.PEEK[2])")
    assert base64.b64decode(data[0][1]) == b"\x00\x01binary" * 100
    typ, data = client.uid("FETCH", str(smtp_uid), "(BODY.PEEK[2.MIME])")
    assert b'Content-Disposition: attachment; filename="data.bin"' in data[0][1]
    typ, data = client.uid("FETCH", str(smtp_uid), "(BODY.PEEK[1])")
    assert data[0][1].strip() == b"Hello over SMTP"
    # Searches by the common keys
    assert client.uid("SEARCH", None, "SUBJECT", '"over rest"')[1] == [str(rest_uid).encode()]
    assert client.uid("SEARCH", None, "TO", "bob@example.com")[1][0].split() == [str(u).encode() for u in uids]
    assert client.uid("SEARCH", None, "FROM", "nobody")[1] == [b""]
    assert client.search(None, "SINCE", "1-Jan-2020")[1] == [b"1 2"]
    assert client.search(None, "BEFORE", "1-Jan-2020")[1] == [b""]
    assert client.uid("SEARCH", None, f"UID {rest_uid}")[1] == [str(rest_uid).encode()]
    typ, data = client.search(None, "BODY", "hello")
    assert typ == "NO" and b"[CANNOT]" in data[0]


def test_imap_flags_are_stored_per_message(account, sent, imap_client):
    smtp_uid, rest_uid = list(sent)
    client = imap_client(account.address, account.token)
    client.select("Sent")
    assert client.uid("SEARCH", None, "UNSEEN")[1][0].split() == [str(smtp_uid).encode(), str(rest_uid).encode()]
    typ, data = client.uid("STORE", str(smtp_uid), "+FLAGS", "(\\Flagged)")
    assert typ == "OK" and b"FLAGS (\\Flagged)" in data[0]
    client.uid("FETCH", str(rest_uid), "(BODY[])")  # not PEEK: sets \Seen
    client.logout()
    again = imap_client(account.address, account.token)
    again.select("Sent")
    assert again.uid("SEARCH", None, "SEEN")[1] == [str(rest_uid).encode()]
    assert again.uid("SEARCH", None, "FLAGGED")[1] == [str(smtp_uid).encode()]
    typ, data = again.uid("FETCH", f"{smtp_uid}:{rest_uid}", "(FLAGS)")
    assert sorted(data) == sorted([f"1 (UID {smtp_uid} FLAGS (\\Flagged))".encode(),
                                   f"2 (UID {rest_uid} FLAGS (\\Seen))".encode()])
    typ, data = again.uid("STORE", str(smtp_uid), "+FLAGS", "(\\Deleted)")
    assert typ == "NO" and b"read-only" in data[0]
    typ, data = again.status("Sent", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY)")
    assert typ == "OK"
    assert f"MESSAGES 2 UNSEEN 1 UIDNEXT {rest_uid + 1}".encode() in data[0]
    with models.db.connection_context():
        inbox = models.Inbox.get(models.Inbox.address == account.address)
    validity = int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
    assert validity == calendar.timegm(inbox.created_at.timetuple())
    typ, data = again.select("Sent", readonly=True)  # EXAMINE
    assert typ == "OK" and again.untagged_responses.get("READ-ONLY") is not None
    assert again.uid("STORE", str(smtp_uid), "-FLAGS", "(\\Flagged)")[0] == "NO"


def test_imap_starttls_port_requires_tls_before_login(account, imap_server, imap_client):
    plain = imaplib.IMAP4(imap_server.host, imap_server.starttls_port, timeout=30)
    try:
        assert "LOGINDISABLED" in plain.capabilities and "STARTTLS" in plain.capabilities
        assert "AUTH=PLAIN" not in plain.capabilities
        typ, data = plain._simple_command("LOGIN", account.address, account.token)
        assert (typ, data) == ("NO", [b"[PRIVACYREQUIRED] Issue STARTTLS first; LOGIN and AUTHENTICATE need TLS"])
    finally:
        plain.shutdown()
    client = imap_client(account.address, account.token, port="starttls")
    assert client.select("INBOX") == ("OK", [b"0"])


def test_imap_refuses_foreign_revoked_and_bad_tokens(account, sent, imap_client, imap_server):
    other = make_account(email="other@example.com", local_part="other")
    with models.db.connection_context():
        revoked_row, revoked = accounts.create_token(account.user, "to revoke")
        accounts.revoke_token(account.user, revoked_row.id)
    for username, password in [(account.address, other.token), (account.address, revoked),
                               (account.address, "il_not-a-token"), (other.address, account.token),
                               ("nobody@inboxlayer.dev", account.token)]:
        client = imap_client()
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
            client.login(username, password)
    # AUTHENTICATE PLAIN works with the right token...
    client = imap_client()
    typ, _ = client.authenticate("PLAIN", lambda _: f"\0{account.address}\0{account.token}".encode())
    assert typ == "OK"
    assert client.select("Sent")[1] == [b"2"]
    # ...and revoking it ends the open session at its next command.
    with models.db.connection_context():
        accounts.revoke_token(account.user, account.token_row.id)
    with pytest.raises(imaplib.IMAP4.abort, match="no longer valid"):
        client.noop()


def test_imap_idle_sees_a_new_sent_message(account, sent, imap_raw, api_server):
    client = imap_raw()
    client.send(f"a LOGIN {account.address} {account.token}\r\n")
    assert client.expect_tagged("a")[-1].startswith("a OK")
    client.send("b SELECT Sent\r\n")
    assert "* 2 EXISTS\r\n" in client.expect_tagged("b")
    client.send("c IDLE\r\n")
    assert client.line() == "+ idling\r\n"
    with ApiSession(api_server, account.token) as api:
        assert api.post(f"/v1/inboxes/{account.address}/send", json=send_body(subject="While idle")).status_code == 202
    started = time.monotonic()
    assert client.line() == "* 3 EXISTS\r\n"
    assert time.monotonic() - started < 5
    client.send("DONE\r\n")
    assert client.expect_tagged("c") == ["c OK IDLE terminated\r\n"]


def test_imap_append_of_a_sent_message_does_not_duplicate_it(account, sent, imap_client):
    smtp_uid, rest_uid = list(sent)
    client = imap_client(account.address, account.token)
    typ, data = client.append("Sent", "(\\Seen)", None, sent[smtp_uid])
    assert typ == "OK"
    assert re.search(rb"\[APPENDUID \d+ %d\]" % smtp_uid, data[0])
    assert len(stored_copies(account.address)) == 2
    foreign = smtp_message(account, "never sent").as_bytes().replace(b"\n", b"\r\n")
    typ, data = client.append("Sent", None, None, foreign)
    assert typ == "NO" and b"[CANNOT]" in data[0]
    assert client.append("Drafts", None, None, foreign)[0] == "NO"
    assert len(stored_copies(account.address)) == 2
