"""What every command shares, client and admin alike: the consoles, JSON output and one-line errors.

stdlib, typer and rich only: the client commands (login, send, status, outbound) import this and
cli/client.py, never the database or the server stack (tests/test_cli_layout.py checks).
"""
import json
import sys

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code ``code``."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def fail(message, code=1):
    raise CliError(message, code)


def print_json(data):
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


JsonOption = typer.Option(False, "--json", help="Machine-readable JSON output.")
