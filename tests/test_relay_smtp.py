"""End to end over real sockets: smtplib -> `inboxlayer smtpd` -> RQ -> `inboxlayer worker` -> SES stand-in."""
import models
from tests.fixtures_relay import events_of
from tests.helpers import wait_until

MESSAGE = (
    "From: Agent <{addr}>\r\n"
    "To: Someone <to@example.com>\r\n"
    "Cc: cc@example.com\r\n"
    "Bcc: secret-one@example.com,\r\n"
    "  secret-two@example.com\r\n"
    "Subject: =?utf-8?q?Caf=C3=A9?= report\r\n"
    "Message-ID: <e2e-1@inboxlayer.dev>\r\n"
    "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Caf\u00e9 at noon.\r\n"
    ".a line that starts with a dot (dot-stuffed on the wire)\r\n"
    "Bcc: this line is body text and stays\r\n"
    "  trailing spaces stay  \r\n"
)


def test_smtp_message_reaches_ses_byte_for_byte_minus_bcc(smtp_client, account, start_worker, ses_sent, client):
    raw = MESSAGE.format(addr=account.address).encode("utf-8")
    recipients = ["to@example.com", "cc@example.com", "secret-one@example.com", "secret-two@example.com"]
    smtp = smtp_client(account.address, account.token)
    reply = smtp.sendmail(account.address, recipients, raw)
    assert reply == {}
    start_worker()

    def sent_row():
        with models.db.connection_context():
            row = models.OutboundEmail.get_or_none(models.OutboundEmail.status == "sent")
            return row

    row = wait_until(sent_row, timeout=30, what="the message to be relayed")

    [sent] = ses_sent()
    expected = raw.replace(b"Bcc: secret-one@example.com,\r\n  secret-two@example.com\r\n", b"")
    assert sent["raw_data"].encode("utf-8") == expected
    assert sent["id"] == row.ses_message_id
    assert sent["source"] == account.address
    assert set(recipients) <= set(sent["destinations"])
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "sent"]
    # The Sent copy keeps the Bcc header; the user can read it back through the API.
    eml = client.get(f"/v1/inboxes/{account.address}/messages/{row.message_id}.eml",
                     headers={"Authorization": f"Bearer {account.token}"})
    assert eml.status_code == 200
    assert eml.data == raw
