"""`inboxlayer audit`: the audit trail (authentications and send decisions), newest first."""
import typer
from rich.table import Table

import models
from cli.common import JsonOption
from cli.common import console
from cli.common import database
from cli.common import fail
from cli.common import iso
from cli.common import print_json
from cli.common import user_by_email

MAX_ROWS = 10_000


def audit(key: str = typer.Option(None, "--key", help="Only this key (its prefix, as `tokens list` shows it)."),
          email: str = typer.Option(None, "--email", help="Only this account."),
          limit: int = typer.Option(50, "--limit", help=f"Rows to show (at most {MAX_ROWS})."),
          json_out: bool = JsonOption):
    """Show the audit trail: logins and sends, with key prefix, client IP and protocol."""
    if not 1 <= limit <= MAX_ROWS:
        fail(f"--limit must be from 1 to {MAX_ROWS}", 2)
    if key is not None and not 1 <= len(key.rstrip("…")) <= 16:
        fail("--key must be a key prefix (up to 16 characters)", 2)
    a = models.AuditEvent
    with database():
        query = a.select()
        if email is not None:
            query = query.where(a.user == user_by_email(email))
        if key is not None:
            query = query.where(a.key_prefix.startswith(key.rstrip("…")))
        rows = list(query.order_by(a.id.desc()).limit(limit))
    if json_out:
        print_json([{"id": r.id, "occurred_at": iso(r.occurred_at), "action": r.action, "outcome": r.outcome,
                     "reason": r.reason or None, "key_prefix": r.key_prefix, "protocol": r.protocol,
                     "client_ip": r.client_ip, "detail": r.detail} for r in rows])
        return
    table = Table("when", "action", "outcome", "reason", "key", "protocol", "client IP", "detail")
    for r in rows:
        color = "green" if r.outcome in ("success", "accepted") else "red"
        table.add_row(iso(r.occurred_at), r.action, f"[{color}]{r.outcome}[/]", r.reason or "", r.key_prefix + "…",
                      r.protocol, r.client_ip, r.detail, )
    console.print(table)
