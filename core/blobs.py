"""Raw message storage: a local directory (one machine) or an S3 bucket (production).

Messages can be 25 MB, so everything here streams file objects; nothing reads a whole
message into memory except ``read_bytes``, which callers use only when they must.
"""
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

from core.errors import BlobError

CHUNK = 1024 * 1024  # bytes per copy step
READ_BUFFER = 64 * 1024  # bytes an opened blob reads from disk at a time (one trip off the event loop)
SAFE_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_./-]{0,200}")


class FileBlobStore:
    def __init__(self, path):
        self.root = Path(path)

    def _path(self, key):
        if not SAFE_KEY.fullmatch(key) or ".." in key:
            raise BlobError(f"bad blob key {key!r}")
        return self.root / key

    def put(self, key, fileobj, sync_name=True):
        """Store ``fileobj`` under ``key`` durably and return its size: the data, the name and any
        new directory are fsynced before this returns, since a 250 follows. With ``sync_name``
        False the name's durability is left to a later sync_names() (group commit: one directory
        fsync for the messages committed together)."""
        return _run_blocking(self._put, self._path(key), fileobj, sync_name)

    def sync_names(self, keys):
        """Make the names of blobs put with ``sync_name=False`` durable: one fsync per directory."""
        directories = {self._path(key).parent for key in keys}
        try:
            _run_blocking(_fsync_dirs, directories)
        except OSError as exc:
            raise BlobError(f"blob store sync failed: {exc.strerror or exc}") from exc

    def _put(self, target, fileobj, sync_name=True):
        try:
            self._make_dirs(target.parent)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(fileobj, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            os.replace(tmp, target)
            if sync_name:
                _fsync_dir(target.parent)  # the rename is durable only once the directory is
        except OSError as exc:
            raise BlobError(f"blob store write failed: {exc.strerror or exc}") from exc
        return size

    def _make_dirs(self, directory):
        if directory.is_dir():
            return
        self._make_dirs(directory.parent)
        try:
            directory.mkdir()
        except FileExistsError:
            return
        _fsync_dir(directory.parent)

    def open(self, key):
        """The blob as a seekable binary file. Opening it and each 64 KiB it reads from disk run the
        way set_blocking_io says (on the IMAP server: gevent's thread pool, so a slow disk or
        network file system stalls only the session reading, not every session)."""
        path = self._path(key)
        try:
            raw = _run_blocking(open, path, "rb", 0)
        except OSError as exc:
            raise BlobError(f"blob {key} unavailable: {exc.strerror or exc}") from exc
        return io.BufferedReader(_ReadsOffLoop(raw), READ_BUFFER)

    def read_bytes(self, key):
        with self.open(key) as f:
            return f.read()

    def check(self):
        """Raise BlobError unless the store's directory is there (made if missing, as the first
        store would) and readable (readiness)."""
        try:
            _run_blocking(self._make_dirs, self.root)
        except OSError as exc:
            raise BlobError(f"{self.root} cannot be made: {exc.strerror or exc}") from exc
        if not self.root.is_dir() or not _run_blocking(os.access, self.root, os.R_OK | os.X_OK):
            raise BlobError(f"{self.root} is not a readable directory")

    def delete(self, key):
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise BlobError(f"blob delete failed: {exc}") from exc

    def list(self, prefix):
        """(key, modified time as a Unix timestamp) of every blob under ``prefix`` (a folder key
        ending in "/"), unfinished writes (".incoming-*") included."""
        folder = self._path(prefix.rstrip("/"))
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BlobError(f"blob store list failed: {exc.strerror or exc}") from exc
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                yield prefix + entry.name, entry.stat(follow_symlinks=False).st_mtime


class _ReadsOffLoop(io.RawIOBase):
    """An unbuffered file whose reads run through the installed blocking-I/O runner (seeks are
    cheap and stay inline); FileBlobStore.open buffers it, so there is one trip per 64 KiB."""

    def __init__(self, raw):
        self.raw = raw

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        return _run_blocking(self.raw.readinto, buffer)

    def seek(self, offset, whence=io.SEEK_SET):
        return self.raw.seek(offset, whence)

    def tell(self):
        return self.raw.tell()

    def fileno(self):
        return self.raw.fileno()

    def close(self):
        if not self.closed:
            self.raw.close()
        super().close()


def _fsync_dirs(directories):
    for directory in directories:
        _fsync_dir(directory)


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_directly(function, *args):
    """The default way to run blocking file I/O: inline (web, worker, CLI, tests)."""
    return function(*args)


_run_blocking = run_directly


def set_blocking_io(runner):
    """Install how FileBlobStore runs its blocking file I/O (writes, opens, reads):
    ``runner(function, *args)`` returns ``function(*args)``. The SMTP and IMAP servers install
    gevent's thread pool at start-up, so one slow disk flush or read does not stall every other
    session; ``None`` restores the inline default."""
    global _run_blocking
    _run_blocking = runner or run_directly


class S3BlobStore:
    def __init__(self, bucket, endpoint_url=None, region=None):
        import boto3  # only S3 deployments pay for the import (here and below; not for a cycle)

        self.bucket = bucket
        self.client = boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region)

    def put(self, key, fileobj, sync_name=True):  # an upload is durable when it returns
        from botocore.exceptions import BotoCoreError
        from botocore.exceptions import ClientError

        counted = _Counting(fileobj)
        try:
            self.client.upload_fileobj(counted, self.bucket, key)
        except (BotoCoreError, ClientError) as exc:
            raise BlobError(f"blob store write failed: {exc}") from exc
        return counted.size

    def sync_names(self, keys):
        pass

    def open(self, key):
        from botocore.exceptions import BotoCoreError
        from botocore.exceptions import ClientError

        spool = tempfile.SpooledTemporaryFile(max_size=CHUNK)
        try:
            self.client.download_fileobj(self.bucket, key, spool)
        except (BotoCoreError, ClientError) as exc:
            raise BlobError(f"blob {key} unavailable: {exc}") from exc
        spool.seek(0)
        return spool

    def read_bytes(self, key):
        with self.open(key) as f:
            return f.read()

    def check(self):
        """Raise BlobError unless the bucket answers (readiness)."""
        from botocore.exceptions import BotoCoreError
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise BlobError(f"blob store unavailable: {exc}") from exc

    def delete(self, key):
        from botocore.exceptions import BotoCoreError
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise BlobError(f"blob delete failed: {exc}") from exc

    def list(self, prefix):
        """(key, modified time as a Unix timestamp) of every object under ``prefix``."""
        from botocore.exceptions import BotoCoreError
        from botocore.exceptions import ClientError

        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], item["LastModified"].timestamp()
        except (BotoCoreError, ClientError) as exc:
            raise BlobError(f"blob store list failed: {exc}") from exc


class _Counting:
    def __init__(self, fileobj):
        self.fileobj, self.size = fileobj, 0

    def read(self, size=-1):
        chunk = self.fileobj.read(size)
        self.size += len(chunk)
        return chunk


_store = None


def configure(config):
    global _store
    blobs = config["blobs"]
    if blobs["backend"] == "s3":
        _store = S3BlobStore(blobs["bucket"], blobs["s3_endpoint_url"], config["ses"]["region"])
    else:
        _store = FileBlobStore(blobs["path"])
    return _store


def store():
    if _store is None:
        raise BlobError("blob store not configured")
    return _store
