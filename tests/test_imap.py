"""IMAP over real sockets against the real `inboxlayer imapd` process: python's imaplib (implicit
TLS and STARTTLS), curl, and a Debian mail program (mbsync) read the Sent folder of messages sent
over SMTP and the REST API; the bytes they fetch equal the stored copy."""
import base64
import calendar
import imaplib
import re
import shutil
import ssl
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
                    .order_by(models.Message.imap_uid))
    return {row.imap_uid: blobs.store().read_bytes(row.blob_key) for row in rows}


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
    assert client.line() == "* 3 EXISTS\r\n"  # a blocking read: the server pushes it, nobody polls here
    assert time.monotonic() - started < 2  # imap.idle_poll is 0.2 s in these tests
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


def test_imap_curl_and_a_large_message_fetch_the_stored_bytes(account, smtp_client, imap_server, imap_client, tmp_path):
    """A 20 MB attachment, sent over SMTP, comes back byte for byte through curl and imaplib."""
    client = smtp_client(account.address, account.token)
    # 20 MB as a 7bit text attachment: base64 would pass the 25 MB message limit (4/3 of 20 MB).
    message = smtp_message(account, "Large")
    message.add_attachment(("0123456789" * 7 + "abcdef\n") * (20 * 2**20 // 77 + 1), subtype="plain", cte="7bit",
                           filename="big.txt")
    client.send_message(message)
    (uid, stored), = stored_copies(account.address).items()
    assert len(stored) > 20 * 2**20
    imap = imap_client(account.address, account.token)
    imap.select("Sent", readonly=True)
    assert imap.uid("FETCH", str(uid), "(FLAGS)")[0] == "OK"
    peak_before = peak_rss_kb(imap_server.proc.pid)
    out = tmp_path / "curl.eml"
    result = subprocess.run(["curl", "--silent", "--show-error", "--cacert", str(imap_server.cafile),
                             "--user", f"{account.address}:{account.token}", "--output", str(out),
                             f"imaps://127.0.0.1:{imap_server.tls_port}/Sent;UID={uid}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == stored
    typ, data = imap.uid("FETCH", str(uid), "(BODYSTRUCTURE BODY.PEEK[])")
    assert data[0][1] == stored
    assert re.search(rb'\("TEXT" "PLAIN" \([^)]*\) NIL NIL "7BIT" \d{8} \d+ NIL \("ATTACHMENT" \("FILENAME" "big.txt"\)\)', data[0][0])
    # Streamed from the blob store: the server's peak memory does not grow by the message's size.
    assert peak_rss_kb(imap_server.proc.pid) - peak_before < 8 * 1024


def peak_rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_imap_mbsync_copies_the_sent_folder_exactly(account, sent, imap_server, tmp_path):
    """isync's mbsync (Debian), a real synchronising client, pulls Sent into a Maildir."""
    mbsync = shutil.which("mbsync")
    assert mbsync, "mbsync missing: run scripts/test-services.sh (installs isync)"
    maildir = tmp_path / "mail"
    maildir.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""IMAPAccount inboxlayer
Host 127.0.0.1
Port {imap_server.tls_port}
User {account.address}
Pass {account.token}
SSLType IMAPS
CertificateFile {imap_server.cafile}
AuthMechs LOGIN

IMAPStore remote
Account inboxlayer

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX

Channel sent
Far :remote:Sent
Near :local:Sent
Create Near
Sync Pull
SyncState *
""")
    result = subprocess.run([mbsync, "-c", str(rc), "sent"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    fetched = sorted(p.read_bytes() for p in (maildir / "Sent" / "cur").iterdir()) + sorted(
        p.read_bytes() for p in (maildir / "Sent" / "new").iterdir())
    # mbsync stores Maildir files with LF line ends and its own X-TUID header (isync's documented
    # conventions); apart from those, the bytes are ours.
    fetched = [re.sub(rb"^X-TUID: \S+\n", b"", data, flags=re.M) for data in fetched]
    assert sorted(fetched) == sorted(data.replace(b"\r\n", b"\n") for data in sent.values())


def test_imap_s_nail_lists_the_sent_folder(account, sent, imap_server, tmp_path):
    """s-nail (Debian's mailx), in batch mode over imaps://, shows both Sent messages."""
    s_nail = shutil.which("s-nail")
    assert s_nail, "s-nail missing: run scripts/test-services.sh"
    user = account.address.replace("@", "%40")
    host = f"127.0.0.1:{imap_server.tls_port}"
    result = subprocess.run(
        [s_nail, "-n", "-N", "-#", "-Sv15-compat", "-Sttycharset=utf-8", f"-Stls-ca-file={imap_server.cafile}",
         "-Stls-ca-no-defaults", f"-Spassword={account.token}", "-Simap-auth=login",
         "-f", f"imaps://{user}@{host}/Sent"],
        input="headers\nquit\n", capture_output=True, text=True, timeout=60,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "MAIL": str(tmp_path / "mbox")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Over SMTP" in result.stdout and "Over REST" in result.stdout, result.stdout + result.stderr


def login_raw(client, account):
    client.send(f"a LOGIN {account.address} {account.token}\r\n")
    assert client.expect_tagged("a")[-1].startswith("a OK")


@pytest.mark.parametrize("command, reply", [
    ("x LOGIN {99999999999}\r\n", "x BAD Literal too large (at most 65536 octets)\r\n"),
    ("x FETCH " + "(" * 4000 + "\r\n", "x BAD Lists nested too deeply\r\n"),
    ("x SEARCH (ALL))\r\n", "x BAD Unbalanced parenthesis\r\n"),
    ("x SEARCH ((ALL)\r\n", "x BAD Unbalanced parenthesis\r\n"),
    ("x UID FETCH " + ",".join(["1"] * 2000) + " FLAGS\r\n", "x BAD Sequence set has more than 1000 parts\r\n"),
    ("x FETCH 1:99 (FLAGS\r\n", "x BAD Unbalanced parenthesis\r\n"),
    ("x FETCH 1 BODY[HEADER.FIELDS (FROM]\r\n", "x BAD HEADER.FIELDS needs a list of field names\r\n"),
    ("x LOGIN a\x00b c\r\n", "x BAD NUL is not allowed in a command\r\n"),
    ("x BLURB\r\n", "x BAD Unknown command BLURB\r\n"),
    ("\r\n", "* BAD Invalid or missing tag\r\n"),
    ('x SELECT "Sent\r\n', "x BAD Unterminated quoted string\r\n"),
    ("x UID FETCH 1:4294967295 (FLAGS)\r\n", "x OK UID FETCH completed\r\n"),
    ("x STATUS Sent (" + "A " * 2500 + ")\r\n", "x BAD Too many arguments\r\n"),
])
def test_imap_hostile_input_gets_bad_and_the_session_goes_on(account, sent, imap_raw, command, reply):
    client = imap_raw()
    login_raw(client, account)
    client.send("s SELECT Sent\r\n")
    client.expect_tagged("s")
    client.send(command)
    lines = client.expect_tagged("x") if not command.startswith("\r\n") else [client.line()]
    assert lines[-1] == reply
    client.send("n NOOP\r\n")
    assert client.expect_tagged("n") == ["n OK NOOP completed\r\n"]


def test_imap_connection_limits_end_with_bye(account, start_imap_server, subprocess_env):
    server = start_imap_server(INBOXLAYER_IMAP_COMMAND_DEADLINE=2, INBOXLAYER_IMAP_PRE_AUTH_DEADLINE=3,
                               INBOXLAYER_IMAP_MAX_LINE_LENGTH=1024, INBOXLAYER_IMAP_MAX_BAD_COMMANDS=5,
                               INBOXLAYER_SMTP_MAX_AUTH_FAILURES=3)
    from tests.fixtures_imap import ImapRaw

    # A line past the limit: BYE, not a buffer that grows.
    client = ImapRaw(server)
    client.send("a NOOP " + "x" * 5000)
    assert client.line() == "* BYE Command line too long\r\n"
    client = ImapRaw(server)
    client.send("a FETCH 1 " + "(" * 10000 + "\r\n")
    assert client.line() == "* BYE Command line too long\r\n"
    # A non-synchronising literal over the limit: the bytes would follow at once, so BYE.
    client = ImapRaw(server)
    client.send("a LOGIN {99999999+}\r\n")
    assert client.line() == "* BYE Literal too large\r\n"
    # Slowloris: a command trickled a byte at a time runs out of time.
    client = ImapRaw(server)
    started = time.monotonic()
    with pytest.raises(OSError):
        for char in "a NOOP and on and on and on":
            client.send(char)
            time.sleep(0.3)
    assert client.line() == "* BYE Command not completed in time\r\n"
    assert time.monotonic() - started < 6
    # Silent before login: the pre-auth deadline.
    client = ImapRaw(server)
    assert client.line() == "* BYE Autologout: idle for too long\r\n"
    # Bad-command budget.
    client = ImapRaw(server)
    for n in range(5):
        client.send(f"b{n} JUNK\r\n")
    lines = [client.line() for _ in range(6)]
    assert lines[-1] == "* BYE Too many invalid commands\r\n"
    # The failed-login throttle (SMTP's, per client address).
    client = ImapRaw(server)
    for n in range(3):
        client.send(f"l{n} LOGIN {account.address} il_wrong\r\n")
        assert client.expect_tagged(f"l{n}") == [f"l{n} NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"]
    client.send(f"l3 LOGIN {account.address} il_wrong\r\n")
    assert client.expect_tagged("l3")[-1] == "* BYE Too many failed authentication attempts; try again later\r\n"
    client = ImapRaw(server)
    client.send(f"l4 LOGIN {account.address} {account.token}\r\n")
    assert client.expect_tagged("l4") == ["* BYE Too many failed authentication attempts; try again later\r\n"]
    assert server.proc.poll() is None


def test_imap_imapclient_parses_what_we_serve_and_idles(account, sent, imap_server, api_server):
    """IMAPClient (a second Python client with its own response parser) reads ENVELOPE,
    BODYSTRUCTURE, flags and bodies, and sees a new message in IDLE."""
    from imapclient import IMAPClient

    smtp_uid, rest_uid = list(sent)
    context = ssl.create_default_context(cafile=str(imap_server.cafile))
    with IMAPClient(imap_server.host, port=imap_server.tls_port, ssl=True, ssl_context=context, timeout=30) as client:
        client.login(account.address, account.token)
        assert {name for _, _, name in client.list_folders()} == {"INBOX", "Sent"}
        assert client.find_special_folder(b"\\Sent") == "Sent"
        info = client.select_folder("Sent")
        assert info[b"EXISTS"] == 2 and info[b"UIDNEXT"] == rest_uid + 1
        fetched = client.fetch([smtp_uid, rest_uid], ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "BODY.PEEK[]",
                                                      "FLAGS"])
        envelope = fetched[smtp_uid][b"ENVELOPE"]
        assert envelope.subject == b"Over SMTP"
        assert [(a.name, a.mailbox, a.host) for a in envelope.to] == [(b"Bob", b"bob", b"example.com")]
        assert [(a.mailbox, a.host) for a in envelope.cc] == [(b"carol", b"example.com")]
        structure = fetched[smtp_uid][b"BODYSTRUCTURE"]
        assert structure.is_multipart
        assert [part[0] for part in structure[0]] == [b"TEXT", b"APPLICATION"]
        for uid in (smtp_uid, rest_uid):
            assert fetched[uid][b"BODY[]"] == sent[uid]
            assert fetched[uid][b"RFC822.SIZE"] == len(sent[uid])
            assert fetched[uid][b"FLAGS"] == ()
        client.add_flags([rest_uid], [b"\\Seen"])
        assert client.search(["UNSEEN"]) == [smtp_uid]
        client.idle()
        with ApiSession(api_server, account.token) as api:
            assert api.post(f"/v1/inboxes/{account.address}/send",
                            json=send_body(subject="IDLE via imapclient")).status_code == 202
        responses = client.idle_check(timeout=10)
        client.idle_done()
        assert (3, b"EXISTS") in responses
