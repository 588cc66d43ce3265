"""`inboxlayer`: admin, sending and server commands."""
import sys

import typer
from rich.markup import escape

from cli import db
from cli import inboxes
from cli import login
from cli import outbound
from cli import send
from cli import servers
from cli import tokens
from cli import users
from cli.common import CliError
from cli.common import err_console

app = typer.Typer(help="Inboxlayer: email inboxes for software agents.", no_args_is_help=True,
                  rich_markup_mode="rich", pretty_exceptions_enable=False)
app.add_typer(db.app, name="db")
app.add_typer(users.app, name="users")
app.add_typer(tokens.app, name="tokens")
app.add_typer(inboxes.app, name="inboxes")
servers.register(app)
app.command()(login.login)
app.command()(login.logout)
app.command()(send.send)
app.command()(outbound.status)
app.add_typer(outbound.app, name="outbound")


def main():
    try:
        # standalone_mode=False hands back typer.Exit's code instead of exiting with it.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except CliError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # the one top-level boundary: a message, never a traceback
        import click  # only on this error path (typer depends on it); not for a cycle

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
