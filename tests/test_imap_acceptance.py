"""Issue 16's acceptance list over real sockets, on both databases: key scopes at login, a second
Debian mail program (fetchmail) that fetches bodies, one table of the commands a client needs
with their real answers, and the hostile cases (absurd literals, 10,000 nested lists, slowloris
at a byte a second, a thousand idle connections)."""
import datetime
import imaplib
import re
import shutil
import socket
import subprocess
import time

import pytest

import models
from core import accounts
from core import keys
from tests.fixtures_imap import ImapRaw
from tests.test_imap import login_raw
from tests.test_imap import sent  # noqa: F401 (fixture: one message over SMTP, one over REST)


def test_imap_refuses_keys_scoped_elsewhere_without_read_or_expired(account, imap_client):
    """core/keys.py decides: a key scoped to another inbox, a send-only key and an expired key get
    NO [AUTHENTICATIONFAILED]; the scoped key opens its own inbox."""
    with models.db.connection_context():
        other_inbox = accounts.create_inbox(account.user, "second", None, account.address.split("@")[1])
        _, scoped = accounts.create_token(account.user, "scoped",
                                          keys.Scope(inbox_ids=frozenset({other_inbox.id}),
                                                     permissions=frozenset({"read", "send"})))
        _, send_only = accounts.create_token(account.user, "send only", keys.Scope(permissions=frozenset({"send"})))
        _, expired = accounts.create_token(account.user, "expired", keys.Scope(
            permissions=frozenset({"read"}), expires_at=models.utcnow() + datetime.timedelta(seconds=1)))
    time.sleep(1.1)  # the expiry passes (a fixed instant, not a wait for the server)
    for password in (scoped, send_only, expired):
        client = imap_client()
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
            client.login(account.address, password)
    client = imap_client(other_inbox.address, scoped)
    assert client.select("Sent") == ("OK", [b"0"])


def test_imap_fetchmail_fetches_the_sent_bodies_byte_for_byte(account, sent, imap_server, tmp_path):  # noqa: F811
    """fetchmail (Debian), a second real mail program, fetches every message of Sent over IMAPS
    into a local delivery program; what it hands over is our stored bytes (apart from the
    Received: line fetchmail adds on top and its LF line ends, its documented behaviour)."""
    fetchmail = shutil.which("fetchmail")
    assert fetchmail, "fetchmail missing: run scripts/test-services.sh (installs fetchmail)"
    out = tmp_path / "delivered"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(f"""set no syslog
poll 127.0.0.1 with proto IMAP port {imap_server.tls_port} auth password
  user "{account.address}" there with password "{account.token}" is "local" here
  ssl sslcertck sslcertfile "{imap_server.cafile}" sslcommonname localhost
  folder Sent
  keep fetchall
  mda "/bin/sh -c 'cat > $(mktemp {out}/msg.XXXXXX)'"
""")
    rc.chmod(0o600)
    result = subprocess.run([fetchmail, "-f", str(rc), "--nodetach", "-v"], capture_output=True, text=True,
                            timeout=120, env={"HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path),
                                              "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    delivered = [p.read_bytes() for p in out.iterdir()]
    stripped = [re.sub(rb"\AReceived: [^\n]*\n(?:[ \t][^\n]*\n)*", b"", data) for data in delivered]
    assert sorted(stripped) == sorted(data.replace(b"\r\n", b"\n") for data in sent.values())
    assert all(data.startswith(b"Received: from 127.0.0.1") for data in delivered)


def _text(data):
    """imaplib's answer (strings and (head, literal) tuples) as one byte string."""
    return b" ".join(part if isinstance(part, bytes) else b"".join(part) for part in data if part is not None)


def test_imap_commands_a_client_needs_answer_for_real(account, sent, imap_client):  # noqa: F811
    smtp_uid, rest_uid = list(sent)
    stored = sent[smtp_uid]
    header_end = stored.index(b"\r\n\r\n") + 4
    c = imap_client(account.address, account.token)
    table = [
        ("CAPABILITY", lambda: c.capability(),
         lambda typ, data: typ == "OK" and set(data[0].split()) >= {b"IMAP4rev1", b"UIDPLUS", b"SPECIAL-USE",
                                                                     b"IDLE", b"NAMESPACE", b"ID", b"UNSELECT"}),
        ("ID", lambda: c.xatom("ID", '("name" "pytest")'),
         lambda typ, data: typ == "OK"
         and c.untagged_responses.pop("ID") == [b'("name" "Inboxlayer" "vendor" "Inboxlayer")']),
        ("NAMESPACE", lambda: c.namespace(), lambda typ, data: (typ, data) == ("OK", [b'(("" "/")) NIL NIL'])),
        ("LIST", lambda: c.list(), lambda typ, data: data == [b'(\\HasNoChildren) "/" INBOX',
                                                               b'(\\HasNoChildren \\Sent) "/" Sent']),
        ("LIST (SPECIAL-USE)", lambda: c._simple_command("LIST", "(SPECIAL-USE)", '""', "*"),
         lambda typ, data: typ == "OK" and c.untagged_responses.pop("LIST") == [b'(\\HasNoChildren \\Sent) "/" Sent']),
        ("LSUB", lambda: c.lsub(), lambda typ, data: typ == "OK" and len(data) == 2 and b"\\Sent" in data[1]),
        ("STATUS", lambda: c.status("Sent", "(MESSAGES UIDNEXT UNSEEN)"),
         lambda typ, data: data == [f"Sent (MESSAGES 2 UIDNEXT {rest_uid + 1} UNSEEN 2)".encode()]),
        ("EXAMINE", lambda: c.select("Sent", readonly=True),
         lambda typ, data: (typ, data) == ("OK", [b"2"]) and c.untagged_responses.get("READ-ONLY") is not None),
        ("FETCH ENVELOPE", lambda: c.uid("FETCH", str(rest_uid), "(ENVELOPE)"),
         lambda typ, data: b'"Over REST" ((NIL NIL "agent" "inboxlayer.dev"))' in _text(data)
         and b'((NIL NIL "bob" "example.com"))' in _text(data)),
        ("FETCH BODYSTRUCTURE", lambda: c.uid("FETCH", str(smtp_uid), "(BODYSTRUCTURE)"),
         lambda typ, data: re.search(rb'BODYSTRUCTURE \(\("TEXT" "PLAIN" .*\)\("APPLICATION" "OCTET-STREAM" .*"MIXED"',
                                     _text(data)) is not None),
        ("FETCH BODY[HEADER]", lambda: c.uid("FETCH", str(smtp_uid), "(BODY.PEEK[HEADER])"),
         lambda typ, data: data[0][1] == stored[:header_end]),
        ("FETCH BODY[TEXT]<partial>", lambda: c.uid("FETCH", str(smtp_uid), "(BODY.PEEK[TEXT]<5.40>)"),
         lambda typ, data: data[0][1] == stored[header_end + 5:header_end + 45]
         and b"BODY[TEXT]<5> {40}" in data[0][0]),
        ("FETCH BODY[1]", lambda: c.uid("FETCH", str(smtp_uid), "(BODY.PEEK[1])"),
         lambda typ, data: data[0][1].strip() == b"Hello over SMTP"),
        ("EXAMINE keeps STORE out", lambda: c.uid("STORE", str(smtp_uid), "+FLAGS", "(\\Seen)"),
         lambda typ, data: typ == "NO" and b"[READ-ONLY]" in data[0]),
        ("SELECT", lambda: c.select("Sent"), lambda typ, data: (typ, data) == ("OK", [b"2"])),
        ("STORE", lambda: c.store("1", "+FLAGS", "(\\Flagged)"),
         lambda typ, data: data == [b"1 (FLAGS (\\Flagged))"]),
        ("SEARCH FLAGGED", lambda: c.search(None, "FLAGGED"), lambda typ, data: data == [b"1"]),
        ("SEARCH UNSEEN SUBJECT", lambda: c.search(None, "UNSEEN", "SUBJECT", "rest"),
         lambda typ, data: data == [b"2"]),
        ("SEARCH OR FROM TO", lambda: c.search(None, "OR", "FROM", "nobody", "TO", "bob@example.com"),
         lambda typ, data: data == [b"1 2"]),
        ("SEARCH NOT LARGER", lambda: c.search(None, "NOT", "LARGER", str(len(sent[rest_uid]))),
         lambda typ, data: data == [b"2"]),
        ("UID SEARCH SINCE", lambda: c.uid("SEARCH", None, "SINCE", "1-Jan-2020"),
         lambda typ, data: data == [f"{smtp_uid} {rest_uid}".encode()]),
        ("UIDPLUS APPENDUID", lambda: c.append("Sent", None, None, sent[rest_uid]),
         lambda typ, data: typ == "OK" and re.search(rb"\[APPENDUID \d+ %d\]" % rest_uid, data[0]) is not None),
        ("UID EXPUNGE refused", lambda: c.uid("EXPUNGE", str(rest_uid)),
         lambda typ, data: typ == "NO" and b"read-only" in data[0]),
        ("UNSELECT", lambda: c.unselect(), lambda typ, data: (typ, data) == ("OK", [b"UNSELECT completed"])),
        ("SELECT again", lambda: c.select("Sent"), lambda typ, data: data == [b"2"]),
        ("CLOSE", lambda: c.close(), lambda typ, data: typ == "OK"),
        ("LOGOUT", lambda: c.logout(), lambda typ, data: typ == "BYE"),
    ]
    for name, command, check in table:
        try:
            typ, data = command()
        except imaplib.IMAP4.error as exc:  # imaplib raises on BAD
            typ, data = "BAD", [str(exc).encode()]
        assert check(typ, data), f"{name}: {typ} {data!r}"


@pytest.mark.parametrize("command, reply", [
    ("x LOGIN {18446744073709551615}\r\n", "x BAD Literal too large (at most 65536 octets)\r\n"),
    ("x APPEND Sent {18446744073709551615}\r\n", "x BAD Literal too large (at most 26214400 octets)\r\n"),
    ("x LOGIN {999999999999999999999999}\r\n", None),  # too many digits to be a literal: an atom, a BAD
    ("x FETCH 1 " + "(" * 4000 + ")" * 4000 + "\r\n", "x BAD Lists nested too deeply\r\n"),  # within 8 KiB
])
def test_imap_absurd_literals_and_deep_lists_get_bad(account, imap_raw, config, command, reply):
    client = imap_raw()
    login_raw(client, account)
    client.send("s SELECT Sent\r\n")
    client.expect_tagged("s")
    client.send(command)
    lines = client.expect_tagged("x")
    if reply is None:
        assert lines[-1].startswith("x BAD ")
    else:
        reply = reply.replace("26214400", str(config["smtp"]["max_message_size"]))
        assert lines[-1] == reply
    client.send("n NOOP\r\n")
    assert client.expect_tagged("n") == ["n OK NOOP completed\r\n"]


def test_imap_ten_thousand_nested_lists_end_the_line_not_the_server(account, imap_server):
    """10,000 '(' are over the 8 KiB command line: BYE, the buffer does not grow, others carry on."""
    client = ImapRaw(imap_server)
    login_raw(client, account)
    client.send("x FETCH 1 " + "(" * 10000 + "\r\n")
    assert client.line() == "* BYE Command line too long\r\n"
    again = ImapRaw(imap_server)
    login_raw(again, account)
    assert imap_server.proc.poll() is None


def test_imap_slowloris_at_a_byte_a_second_is_cut_at_the_command_deadline(account, start_imap_server):
    server = start_imap_server(INBOXLAYER_IMAP_COMMAND_DEADLINE=3)
    client = ImapRaw(server)
    login_raw(client, account)
    started = time.monotonic()
    with pytest.raises(OSError):
        for char in "a NOOP and on and on and on":
            client.send(char)
            time.sleep(1)
    assert client.line() == "* BYE Command not completed in time\r\n"
    assert 3 <= time.monotonic() - started < 6


def test_imap_a_thousand_idle_connections_do_not_slow_another_client(account, sent, start_imap_server):  # noqa: F811
    server = start_imap_server(INBOXLAYER_IMAP_MAX_CONNECTIONS_PER_IP=1100, INBOXLAYER_IMAP_MAX_CONNECTIONS=1100)
    idle = []
    try:
        for _ in range(1000):  # plain connections on the STARTTLS port, each greeted, then silent
            sock = socket.create_connection((server.host, server.starttls_port), timeout=30)
            idle.append(sock)
        for sock in idle[::100]:
            assert sock.recv(200).startswith(b"* OK [CAPABILITY ")
        started = time.monotonic()
        client = ImapRaw(server)
        login_raw(client, account)
        client.send("s SELECT Sent\r\nf FETCH 1:* (BODY.PEEK[])\r\n")
        client.expect_tagged("s")
        lines = client.expect_tagged("f")
        assert lines[-1] == "f OK FETCH completed\r\n"
        assert time.monotonic() - started < 3
    finally:
        for sock in idle:
            sock.close()
    assert server.proc.poll() is None


def test_imap_flag_changes_reach_other_sessions_in_idle_and_at_noop(account, sent, imap_raw):  # noqa: F811
    smtp_uid, rest_uid = list(sent)
    watcher, changer = imap_raw(), imap_raw()
    for client in (watcher, changer):
        login_raw(client, account)
        client.send("s SELECT Sent\r\n")
        client.expect_tagged("s")
    watcher.send("i IDLE\r\n")
    assert watcher.line() == "+ idling\r\n"
    changer.send(f"c UID STORE {smtp_uid} +FLAGS (\\Flagged)\r\n")
    assert changer.expect_tagged("c") == [f"* 1 FETCH (UID {smtp_uid} FLAGS (\\Flagged))\r\n",
                                          "c OK UID STORE completed\r\n"]
    started = time.monotonic()
    assert watcher.line() == f"* 1 FETCH (UID {smtp_uid} FLAGS (\\Flagged))\r\n"  # pushed, not asked for
    assert time.monotonic() - started < 2
    watcher.send("DONE\r\n")
    assert watcher.expect_tagged("i") == ["i OK IDLE terminated\r\n"]
    changer.send(f"d UID STORE {smtp_uid} -FLAGS.SILENT (\\Flagged)\r\ne UID FETCH {rest_uid} (BODY[])\r\n")
    changer.expect_tagged("d")
    changer.expect_tagged("e")  # sets \Seen on message 2
    watcher.send("n NOOP\r\n")
    assert watcher.expect_tagged("n") == [f"* 1 FETCH (UID {smtp_uid} FLAGS ())\r\n",
                                          f"* 2 FETCH (UID {rest_uid} FLAGS (\\Seen))\r\n",
                                          "n OK NOOP completed\r\n"]
    changer.send("n NOOP\r\n")  # its own changes are not echoed back to it
    assert changer.expect_tagged("n") == ["n OK NOOP completed\r\n"]
