"""`inboxlayer tokens`: API tokens (also SMTP passwords)."""
import typer
from rich.table import Table

import models
from core import accounts
from cli.common import JsonOption
from cli.common import console
from cli.common import database
from cli.common import fail
from cli.common import iso
from cli.common import print_json
from cli.common import user_by_email

app = typer.Typer(help="API tokens: the password for SMTP and the REST API.", no_args_is_help=True)


def token_json(row):
    return {"id": row.id, "name": row.name, "prefix": row.prefix, "created_at": iso(row.created_at),
            "last_used_at": iso(row.last_used_at), "revoked_at": iso(row.revoked_at)}


@app.command()
def create(email: str = typer.Argument(..., help="Owner's email."),
           name: str = typer.Option("default", help="A name to recognise the token by."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="Print the token alone."),
           json_out: bool = JsonOption):
    """Create a token. It is shown once and never stored."""
    name = name.strip()
    if not name or len(name) > 100:
        fail("token name must be 1 to 100 characters")
    with database():
        user = user_by_email(email)
        row, token = accounts.create_token(user, name)
    if quiet:
        print(token)
    elif json_out:
        print_json({**token_json(row), "token": token})
    else:
        console.print(f"[green]created[/] token {row.name!r} for {user.email}")
        console.print(f"[bold]{token}[/]", highlight=False, soft_wrap=True)
        console.print("[dim]Copy it now: it is not shown again.[/]")


@app.command("list")
def list_tokens(email: str = typer.Argument(..., help="Owner's email."), json_out: bool = JsonOption):
    """List a user's tokens (prefix only)."""
    with database():
        user = user_by_email(email)
        rows = list(user.tokens.order_by(models.ApiToken.id))
    if json_out:
        print_json([token_json(r) for r in rows])
        return
    table = Table("id", "name", "prefix", "created", "last used", "status")
    for r in rows:
        table.add_row(str(r.id), r.name, r.prefix + "…", iso(r.created_at), iso(r.last_used_at) or "never",
                      "[red]revoked[/]" if r.revoked_at else "[green]active[/]")
    console.print(table)


@app.command()
def revoke(email: str = typer.Argument(..., help="Owner's email."),
           token_id: int = typer.Argument(..., help="Token id from `tokens list`.")):
    """Revoke a token; the next SMTP AUTH or API request with it fails."""
    with database():
        user = user_by_email(email)
        revoked = accounts.revoke_token(user, token_id)
    if not revoked:
        fail(f"no active token {token_id} for {email}")
    console.print(f"[green]revoked[/] token {token_id}")
