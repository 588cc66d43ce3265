"""`inboxlayer`: admin, sending and server commands.

Client commands talk HTTP and SMTP only: `login`, `logout`, `send`, `status`, `outbound`,
`suppressions`, `events`, `webhooks`, `mcp` import
cli/client.py and cli/output.py, never Flask, peewee or Redis. Admin commands open the database
(`db`, `users`, `tokens`, `inboxes`, through cli/common.py) or run a process (`web`, `smtpd`,
`worker`, `dev`, `health`, in cli/servers.py).

Each sub-command's module is imported only when that command runs or shows its own help:
`inboxlayer --help` lists the names and one-line help below without importing any of them, and
`inboxlayer send` never loads the admin side. tests/test_cli_layout.py holds both to that.
"""
import functools
import importlib
import sys

import typer
from rich.markup import escape
from typer.core import TyperCommand
from typer.core import TyperGroup

from cli.output import CliError
from cli.output import err_console

# Shared by the root app and every sub-command built from COMMANDS, as `add_typer` would share them.
APP_SETTINGS = {"rich_markup_mode": "rich", "pretty_exceptions_enable": False}

# name: ("module:attribute", the one-line help `inboxlayer --help` shows). The attribute is a
# command function or a Typer app of sub-commands; its docstring or help= says the same line
# (tests/test_cli_layout.py compares them). Listed in `inboxlayer --help` in this order.
COMMANDS = {
    "web": ("cli.servers:web", "Serve the dashboard and REST API (gunicorn, gevent worker)."),
    "smtpd": ("cli.servers:smtpd", "Serve SMTP submission on the STARTTLS and implicit-TLS ports."),
    "imapd": ("cli.servers:imapd", "Serve IMAP (the Sent folder) on the implicit-TLS and STARTTLS ports."),
    "worker": ("cli.servers:worker", "Run a relay worker (RQ) with the periodic reconciler."),
    "dev": ("cli.servers:dev", "Everything on one machine: web, SMTP, worker and the SES stand-in."),
    "health": ("cli.servers:health", "Check that the database, Redis and SES answer (exit 1 if not)."),
    "login": ("cli.login:login", "Store the API URL and token (0600) for send, status and outbound."),
    "logout": ("cli.login:logout", "Forget the stored token."),
    "send": ("cli.send:send", "Send a message and print its OutboundEmail id."),
    "status": ("cli.outbound:status", "Show an outbound email's status and history."),
    "suppressions": ("cli.suppressions:app", "Suppressed recipients: addresses this account will not send to."),
    "db": ("cli.db:app", "Database schema: create and migrate."),
    "users": ("cli.users:app", "User accounts."),
    "tokens": ("cli.tokens:app", "API tokens: the password for SMTP and the REST API."),
    "inboxes": ("cli.inboxes:app", "Inboxes: the addresses agents send from."),
    "outbound": ("cli.outbound:app", "Outbound emails: status and history of what was sent."),
    "events": ("cli.events:app", "Events: what happened to your mail, domains and inboxes."),
    "webhooks": ("cli.webhooks:app", "Webhook endpoints: where your events are POSTed, signed."),
    "mcp": ("cli.mcp:mcp", "Serve the MCP tools over stdio for a local agent (INBOXLAYER_TOKEN, INBOXLAYER_API_URL)."),
    "audit": ("cli.audit:audit", "Show the audit trail: logins and sends, with key prefix, client IP and protocol."),
}


def build_command(name, target):
    """The click command for ``target`` ("module:attribute"), built exactly as registering it on
    the root app with ``app.command(name=...)`` or ``app.add_typer(..., name=...)`` would."""
    module_name, _, attribute = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attribute)
    holder = typer.Typer(**APP_SETTINGS)
    if isinstance(obj, typer.Typer):
        holder.add_typer(obj, name=name)
    else:
        holder.command(name=name)(obj)
    return typer.main.get_group(holder).commands[name]


class LazyCommand(TyperCommand):
    """A sub-command known by its name and one-line help until it is used: parsing its arguments
    (running it, its --help, shell completion) imports its module and hands over to the real one."""

    def __init__(self, name, target, help):
        super().__init__(name=name, help=help)
        self.target = target

    @functools.cached_property
    def command(self):
        return build_command(self.name, self.target)

    def make_context(self, info_name, args, parent=None, **extra):
        return self.command.make_context(info_name, args, parent=parent, **extra)


class LazyGroup(TyperGroup):
    """The root group: every entry of COMMANDS as a LazyCommand (listing them imports nothing)."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        for name, (target, help) in COMMANDS.items():
            self.add_command(LazyCommand(name, target, help))


def root():
    # Typer builds a group (not a lone command) only for an app with a callback or registered
    # commands; the commands here are added by LazyGroup, so the root has this empty callback.
    pass


app = typer.Typer(cls=LazyGroup, callback=root, help="Inboxlayer: email inboxes for software agents.",
                  no_args_is_help=True, **APP_SETTINGS)


def main():
    try:
        # standalone_mode=False hands back typer.Exit's code instead of exiting with it.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except CliError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.code)
    except typer.TyperException as exc:  # typer's (bundled click's) usage errors: usage + reason, exit 2
        if exc.format_message():  # empty after a bare `inboxlayer`: rich already printed the help
            exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # the one top-level boundary: a message, never a traceback
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
