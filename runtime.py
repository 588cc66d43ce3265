"""Process start-up: load settings once and connect the database, Redis and the blob store.

Every process (web, smtp, worker, CLI) calls ``configure()`` once before serving; tests call it
with their own config dict.
"""
import json
import logging
import sys

import models
import settings
from smtpd_worker import blobs
from smtpd_worker import queue


def configure(config=None):
    config = settings.use(config or settings.get())
    models.init_database(config["database"]["url"], config["database"]["max_connections"])
    queue.configure(config)
    blobs.configure(config)
    return config


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
    handler = logging.StreamHandler(sys.stderr)
    if config["server"]["log_format"] == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config["server"]["log_level"].upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
