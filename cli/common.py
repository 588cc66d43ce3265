"""What every CLI command shares: settings start-up, output, and one-line errors."""
import contextlib
import json
import sys

import typer
from peewee import InterfaceError
from peewee import OperationalError
from rich.console import Console

import models
import runtime
import settings

console = Console()
err_console = Console(stderr=True)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code ``code``."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def fail(message, code=1):
    raise CliError(message, code)


def load_settings():
    try:
        return settings.get()
    except settings.SettingsError as exc:
        raise CliError(f"configuration error: {exc}", 2) from None


@contextlib.contextmanager
def database():
    """Configure the process once and scope one DB connection to the command."""
    config = load_settings()
    runtime.configure(config)
    try:
        with models.db.connection_context():
            yield config
    except (OperationalError, InterfaceError) as exc:
        raise CliError(f"database unavailable: {exc}".strip()) from None


def print_json(data):
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


def user_by_email(email):
    user = models.User.get_or_none(models.User.email == email.strip().lower())
    if user is None:
        fail(f"no user {email!r}")
    return user


JsonOption = typer.Option(False, "--json", help="Machine-readable JSON output.")
