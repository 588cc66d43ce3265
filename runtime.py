"""Process start-up: load settings once and connect the database, Redis and the blob store.

Every process (web, smtp, worker, CLI) calls ``configure()`` once before serving; tests call it
with their own config dict.
"""
import json
import logging
import os
import sys
from pathlib import Path

import models
import settings
from core import blobs
from core import outbox


def configure(config=None):
    """Install ``config`` (a settings dict; default: config.toml + environment) and connect to what
    it names. Returns the dict; ``settings.current()`` is its typed view."""
    config = settings.use(config or settings.get())
    private_state(config)
    database = settings.current().database
    models.init_database(database.url, database.max_connections, prepare=database.prepare_statements)
    outbox.configure(config)
    blobs.configure(config)
    return config


def private_state(config):
    """Local state is its owner's alone: a new data_dir is created 0700 and the SQLite database 0600
    (SQLite gives its -wal and -shm files the database's mode). An existing SQLite file we own that
    others can read is tightened; an existing data_dir is left as the operator made it."""
    typed = settings.view(config)
    data_dir = Path(typed.server.data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    url = typed.database.url
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return
    path = Path(url[len("sqlite:///"):])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            try:
                info = file.stat()
                if info.st_uid == os.getuid() and info.st_mode & 0o077:
                    file.chmod(0o600)
            except FileNotFoundError:
                pass


class JsonFormatter(logging.Formatter):
    """One JSON object a line; carries the OutboundEmail public id when the record has one."""

    def format(self, record):
        entry = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "msg": record.getMessage()}
        for field in ("outbound_id", "client", "session"):
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(config):
    server = settings.view(config).server
    handler = logging.StreamHandler(sys.stderr)
    if server.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(server.log_level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
