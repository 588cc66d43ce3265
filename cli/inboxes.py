"""`inboxlayer inboxes`: sending addresses."""
import typer
from rich.markup import escape
from rich.table import Table

import models
import settings
from core import accounts
from core import recipients
from cli.common import JsonOption
from cli.common import console
from cli.common import database
from cli.common import fail
from cli.common import iso
from cli.common import print_json
from cli.common import user_by_email

app = typer.Typer(help="Inboxes: the addresses agents send from.", no_args_is_help=True)


def inbox_json(inbox):
    return {"id": inbox.id, "address": inbox.address, "display_name": inbox.display_name,
            "domain": inbox.domain.name if inbox.domain_id else None, "created_at": iso(inbox.created_at),
            "paused": inbox.paused_at is not None, "paused_reason": inbox.paused_reason,
            "paused_at": iso(inbox.paused_at) if inbox.paused_at else None}


@app.command()
def create(address: str = typer.Argument(..., help="name@inboxlayer.dev or name@your-verified-domain"),
           owner: str = typer.Option(..., "--owner", help="Owner's email."),
           display_name: str = typer.Option("", help="Display name for the From: header."),
           allow_reserved: bool = typer.Option(False, "--allow-reserved",
                                               help="Let the operator take a role address of the default "
                                                    "domain (postmaster@, abuse@, ...)."),
           json_out: bool = JsonOption):
    """Create an inbox on the default domain or on one of the owner's domains."""
    with database() as config:
        user = user_by_email(owner)
        try:
            normalized = models.normalize_address(address)
        except models.AddressError as exc:
            fail(f"invalid address {address!r}: {exc}")
        local, domain_name = normalized.rsplit("@", 1)
        domain = None
        if domain_name != config["server"]["default_domain"]:
            domain = models.Domain.get_or_none(models.Domain.name == domain_name, models.Domain.user == user)
            if domain is None:
                fail(f"{domain_name} is neither {config['server']['default_domain']} nor a domain of {user.email}")
        try:
            inbox = accounts.create_inbox(user, local, domain, config["server"]["default_domain"], display_name,
                                          max_inboxes=settings.plan_limits(config, user.plan)["max_inboxes"],
                                          allow_reserved=allow_reserved)
        except accounts.InboxLimitReached as exc:
            fail(f"{user.email}: {exc}")
        except accounts.ReservedAddress as exc:
            fail(f"{exc} (an operator may take it with --allow-reserved)")
        except models.AddressError as exc:
            fail(f"invalid address {address!r}: {exc}")
        except accounts.InboxExists:
            fail(f"{normalized} is already taken")
        data = inbox_json(inbox)
    if json_out:
        print_json(data)
    else:
        console.print(f"[green]created[/] inbox {data['address']}")


@app.command("list")
def list_inboxes(owner: str = typer.Option(None, "--owner", help="Only this owner's inboxes."),
                 json_out: bool = JsonOption):
    """List inboxes."""
    with database():
        query = models.Inbox.select().order_by(models.Inbox.id)
        if owner:
            query = query.where(models.Inbox.user == user_by_email(owner))
        rows = [inbox_json(i) | {"owner": i.user.email} for i in query]
    if json_out:
        print_json(rows)
        return
    table = Table("id", "address", "owner", "domain", "created", "sending")
    for r in rows:
        sending = f"[red]paused: {escape(r['paused_reason'] or '')}[/]" if r["paused"] else "[green]ok[/]"
        table.add_row(str(r["id"]), r["address"], r["owner"], r["domain"] or "(default)", r["created_at"], sending)
    console.print(table)


@app.command()
def resume(address: str = typer.Argument(..., help="The paused inbox.")):
    """Resume a paused inbox (the automatic pause then counts bounces and complaints from now)."""
    with database():
        inbox = models.Inbox.get_or_none(models.Inbox.address == address.strip().lower())
        if inbox is None:
            fail(f"no inbox {address}")
        was_paused = recipients.resume(inbox)
    console.print(f"[green]resumed[/] {inbox.address}" if was_paused else f"{inbox.address} was not paused",
                  highlight=False)
