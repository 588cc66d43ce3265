"""The relay job against the SES stand-in (moto over HTTP), Redis and the database."""
import base64
import json

from smtpd_worker import jobs
from smtpd_worker import relay
from tests.fixtures_relay import events_of
from tests.fixtures_relay import make_message
from tests.fixtures_relay import outbound
from tests.fixtures_relay import relay_until
from tests.fixtures_relay import throttle_response


def test_relay_outbound_sends_bytes_without_bcc(relay_config, account, submit, ses_sent):
    raw = make_message(account.address, to="to@example.com", bcc="hidden@example.com")
    row = submit(raw, recipients=["to@example.com", "hidden@example.com"])

    sent_row = relay_until(row.id)

    [sent] = ses_sent()
    expected = raw.replace(b"Bcc: hidden@example.com\r\n", b"")
    assert sent["raw_data"].encode() == expected
    assert sent["source"] == account.address
    assert "hidden@example.com" in sent["destinations"]
    assert sent_row.ses_message_id == sent["id"]
    assert sent_row.attempts == 1
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "sent"]
