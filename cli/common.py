"""What the admin commands share: settings start-up and one database connection per command.

Importing this opens the server stack (models, runtime: peewee, redis); client commands import
cli/output.py instead. The output helpers are re-exported here for the admin modules.
"""
import contextlib

from peewee import InterfaceError
from peewee import OperationalError

import models
import runtime
import settings
from cli.output import CliError
from cli.output import JsonOption  # noqa: F401 (re-exported)
from cli.output import console  # noqa: F401 (re-exported)
from cli.output import err_console  # noqa: F401 (re-exported)
from cli.output import fail
from cli.output import iso  # noqa: F401 (re-exported)
from cli.output import print_json  # noqa: F401 (re-exported)


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


def user_by_email(email):
    user = models.User.get_or_none(models.User.email == email.strip().lower())
    if user is None:
        fail(f"no user {email!r}")
    return user
