"""`inboxlayer tokens`: API tokens (also SMTP passwords)."""
from typing import List
from typing import Optional

import typer
from rich.table import Column
from rich.table import Table

import models
from core import accounts
from core import keys
from cli.common import JsonOption
from cli.common import console
from cli.common import database
from cli.common import fail
from cli.common import iso
from cli.common import print_json
from cli.common import user_by_email

OPTION_OF = {"inboxes": "--inbox", "permissions": "--permission", "expires_in": "--expires-in",
             "expires_at": "--expires-in", "daily_limit": "--daily-limit", "sandbox": "--sandbox"}

app = typer.Typer(help="API tokens: the password for SMTP and the REST API.", no_args_is_help=True)


def token_json(row):
    scope = keys.describe(row)
    return {"id": row.id, "name": row.name, "prefix": row.prefix, "inboxes": scope["inboxes"],
            "permissions": scope["permissions"], "expires_at": iso(scope["expires_at"]),
            "daily_limit": scope["daily_limit"], "sandbox": scope["sandbox"], "created_at": iso(row.created_at),
            "last_used_at": iso(row.last_used_at), "last_used_ip": row.last_used_ip,
            "last_used_via": row.last_used_via, "revoked_at": iso(row.revoked_at)}


@app.command()
def create(email: str = typer.Argument(..., help="Owner's email."),
           name: str = typer.Option("default", help="A name to recognise the token by."),
           inbox: Optional[List[str]] = typer.Option(None, "--inbox", help="Limit the key to this inbox (repeat for "
                                                     "several); default: every inbox of the account."),
           permission: Optional[List[str]] = typer.Option(None, "--permission", help="send, read or manage (repeat "
                                                          "for several); default: send and read."),
           expires_in: Optional[str] = typer.Option(None, "--expires-in", help="Expire after this long: 30d, 12h, "
                                                    "2w, 90m."),
           daily_limit: Optional[int] = typer.Option(None, "--daily-limit", help="Sends per UTC day for this key, "
                                                     "under the account's quota."),
           sandbox: bool = typer.Option(False, "--sandbox", help="Accept and store messages, never relay them."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="Print the token alone."),
           json_out: bool = JsonOption):
    """Create a token. It is shown once and never stored."""
    name = name.strip()
    if not name or len(name) > 100:
        fail("token name must be 1 to 100 characters")
    with database():
        user = user_by_email(email)
        try:
            expires_at = models.utcnow() + keys.parse_duration(expires_in) if expires_in is not None else None
            scope = keys.build_scope(user, inboxes=inbox or None, permissions=permission or None,
                                     expires_at=expires_at, daily_limit=daily_limit, sandbox=sandbox)
        except keys.KeyInputError as exc:
            fail(f"{OPTION_OF.get(exc.field, exc.field)} {exc.message}", 2)
        row, token = accounts.create_token(user, name, scope)
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
        rows = [token_json(r) for r in user.tokens.order_by(models.ApiToken.id)]
    if json_out:
        print_json(rows)
        return
    table = Table("id", "name", Column("prefix", no_wrap=True), "inboxes", "permissions", "expires", "daily limit",
                  "last used", "status")
    now = iso(models.utcnow())
    for r in rows:
        used = "never"
        if r["last_used_at"]:
            used = f"{r['last_used_at']} from {r['last_used_ip'] or '?'} ({r['last_used_via'] or '?'})"
        status = "[green]active[/]"
        if r["revoked_at"]:
            status = "[red]revoked[/]"
        elif r["expires_at"] and r["expires_at"] <= now:
            status = "[red]expired[/]"
        elif r["sandbox"]:
            status = "[yellow]sandbox[/]"
        table.add_row(str(r["id"]), r["name"], r["prefix"] + "…",
                      ", ".join(r["inboxes"]) if r["inboxes"] is not None else "all", ",".join(r["permissions"]),
                      r["expires_at"] or "never", str(r["daily_limit"] or "-"), used, status)
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
