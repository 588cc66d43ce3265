"""`inboxlayer users`: accounts."""
import sys

import typer

import models
from core import accounts
from cli.common import JsonOption
from cli.common import console
from cli.common import database
from cli.common import fail
from cli.common import iso
from cli.common import print_json

app = typer.Typer(help="User accounts.", no_args_is_help=True)

@app.command()
def create(email: str = typer.Argument(..., help="The account's email address."),
           password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
           plan: str = typer.Option(None, help="Plan name (a key of [plans]); default server.default_plan."),
           json_out: bool = JsonOption):
    """Create a user account."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < accounts.MIN_PASSWORD_LENGTH:
        fail(f"password must be at least {accounts.MIN_PASSWORD_LENGTH} characters")
    try:
        email = accounts.normalize_email(email)
    except accounts.InvalidEmail as exc:
        fail(f"invalid email {email!r}: {exc}")
    with database() as config:
        plan = plan or config["server"]["default_plan"]
        if plan not in config["plans"]:
            fail(f"unknown plan {plan!r} (known: {', '.join(config['plans'])})")
        try:
            user = accounts.create_user(email, password, plan)
        except accounts.AccountExists:
            fail(f"a user {email!r} already exists")
    if json_out:
        print_json({"id": user.id, "email": user.email, "plan": user.plan, "created_at": iso(user.created_at)})
    else:
        console.print(f"[green]created[/] user {user.email} (plan {user.plan})")


@app.command("list")
def list_users(json_out: bool = JsonOption):
    """List user accounts."""
    with database():
        rows = list(models.User.select().order_by(models.User.id))
    if json_out:
        print_json([{"id": u.id, "email": u.email, "plan": u.plan, "created_at": iso(u.created_at)} for u in rows])
        return
    from rich.table import Table  # only for the table output (not for a cycle)

    table = Table("id", "email", "plan", "created")
    for u in rows:
        table.add_row(str(u.id), u.email, u.plan, iso(u.created_at))
    console.print(table)
