"""The orphan-blob sweeper: files no Message refers to go; every referenced or young file stays."""
import datetime
import io
import os
import time

import boto3

import models
import runtime
from core import blobs
from smtpd_worker import periodic
from smtpd_worker import sweeper
from tests.fixtures_relay import relay_until


def _blob_key_of(row):
    with models.db.connection_context():
        return models.Message.get_by_id(row.message_id).blob_key


def _age(key, seconds):
    path = blobs.store().root / key
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_sweeper_deletes_old_unreferenced_blobs_and_keeps_the_rest(config, submit, ses_sent, reconfigure):
    config["blobs"]["orphan_after"] = 3600
    reconfigure()
    row = submit()
    kept_key = _blob_key_of(row)
    kept_bytes = blobs.store().read_bytes(kept_key)
    today = datetime.datetime.now(datetime.timezone.utc).date()
    store = blobs.store()
    day = f"{today:%Y/%m/%d}"
    old_orphan, half_written, young_orphan = f"{day}/ob_never_committed.eml", f"{day}/.incoming-abc", f"{day}/ob_young.eml"
    outside_window = f"{today - datetime.timedelta(days=10):%Y/%m/%d}/ob_old_day.eml"
    for key in (old_orphan, half_written, young_orphan, outside_window):
        store.put(key, io.BytesIO(b"Subject: orphan\r\n\r\nx\r\n"))
    for key in (kept_key, old_orphan, half_written, outside_window):
        _age(key, 2 * 3600)

    deleted = sweeper.sweep_orphan_blobs()

    assert sorted(deleted) == sorted([old_orphan, half_written])
    for key in (kept_key, young_orphan, outside_window):
        assert (store.root / key).exists(), key
    for key in (old_orphan, half_written):
        assert not (store.root / key).exists(), key
    relay_until(row.id)  # the referenced message is still whole and still relays
    assert [m["raw_data"].encode() for m in ses_sent()] == [kept_bytes]
    assert sweeper.sweep_orphan_blobs() == []


def test_sweeper_on_the_s3_store(config, submit, ses_endpoint, reconfigure):
    s3 = boto3.client("s3", endpoint_url=ses_endpoint, region_name="us-east-1")
    bucket = f"inboxlayer-sweep-{config['redis']['prefix'].lower()}"
    s3.create_bucket(Bucket=bucket)
    config["blobs"].update(backend="s3", bucket=bucket, s3_endpoint_url=ses_endpoint, orphan_after=60)
    reconfigure()
    runtime.configure(config)
    kept_key = _blob_key_of(submit())
    orphan = f"{datetime.datetime.now(datetime.timezone.utc):%Y/%m/%d}/ob_orphan.eml"
    blobs.store().put(orphan, io.BytesIO(b"Subject: orphan\r\n\r\nx\r\n"))

    assert sweeper.sweep_orphan_blobs() == []  # both were written just now: too young
    deleted = sweeper.sweep_orphan_blobs(now=time.time() + 120)

    assert deleted == [orphan]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [kept_key]


def test_sweeper_is_a_periodic_task(config):
    assert (config["blobs"]["sweep_interval"], "smtpd_worker.sweeper:sweep_orphan_blobs") in periodic.tasks(config)
