"""The production blob store: raw messages in an S3 bucket (moto's S3 over HTTP stands in for AWS)."""
import io

import boto3
import pytest

import models
import runtime
from core import blobs
from core import errors
from core import submit
from tests.fixtures_relay import make_message
from tests.fixtures_relay import relay_until


def test_s3_blob_store_keeps_the_message_and_the_relay_reads_it(config, account, ses_endpoint, ses_sent, reconfigure):
    bucket = f"inboxlayer-{config['redis']['prefix'].lower()}"
    boto3.client("s3", endpoint_url=ses_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    config["blobs"].update(backend="s3", bucket=bucket, s3_endpoint_url=ses_endpoint)
    reconfigure()
    runtime.configure(config)
    assert isinstance(blobs.store(), blobs.S3BlobStore)

    raw = make_message(account.address, subject="kept in s3", body="x" * 300_000 + "\r\n")
    row = submit.submit(account.user, account.inbox, account.address, ["rcpt@example.com"],
                            io.BytesIO(raw), via="api")

    with models.db.connection_context():
        message = models.Message.get_by_id(row.message_id)
    stored = boto3.client("s3", endpoint_url=ses_endpoint, region_name="us-east-1").get_object(
        Bucket=bucket, Key=message.blob_key)["Body"].read()
    assert stored == raw and message.size == len(raw)
    assert blobs.store().read_bytes(message.blob_key) == raw

    relay_until(row.id)
    assert [m["raw_data"].encode() for m in ses_sent()] == [raw]


def test_s3_blob_store_unavailable_is_a_temporary_failure(config, account, free_tcp_port, reconfigure):
    config["blobs"].update(backend="s3", bucket="missing", s3_endpoint_url=f"http://127.0.0.1:{free_tcp_port}")
    reconfigure()
    runtime.configure(config)
    raw = make_message(account.address)
    with pytest.raises(errors.TemporaryFailure) as refused:
        submit.submit(account.user, account.inbox, account.address, ["rcpt@example.com"], io.BytesIO(raw),
                          via="api")
    assert refused.value.smtp_reply == "451 4.3.0 Temporary server error, try again later"
    with models.db.connection_context():
        assert models.OutboundEmail.select().count() == 0
        assert models.sends_today(account.user) == 0
