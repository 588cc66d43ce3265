"""`inboxlayer suppressions list|add|remove`: the account's suppression list, over the REST API
(a client command: no server stack is loaded)."""
import urllib.parse

import typer
from rich.table import Column
from rich.table import Table

from cli.client import ApiClient
from cli.client import ApiUrlOption
from cli.client import TokenOption
from cli.client import resolve
from cli.output import JsonOption
from cli.output import console
from cli.output import err_console
from cli.output import print_json

app = typer.Typer(help="Suppressed recipients: addresses this account will not send to.", no_args_is_help=True)


@app.command("list")
def list_suppressions(limit: int = typer.Option(100, "--limit", min=1, max=100, help="How many (newest first)."),
                      cursor: str = typer.Option(None, "--cursor", help="next_cursor of a previous --json page."),
                      json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """List suppressed addresses, newest first, with why."""
    page = ApiClient(resolve(api_url, token)).get("/v1/suppressions", limit=limit, cursor=cursor)
    if json_out:
        print_json(page)
        return
    table = Table(Column("address", no_wrap=True), "source", Column("reason", overflow="fold"), "since")
    for row in page["data"]:
        table.add_row(row["address"], row["source"], row["reason"], row["created_at"])
    console.print(table)
    if page["has_more"]:
        err_console.print(f"[dim]more: --cursor {page['next_cursor']}[/]", highlight=False)


@app.command()
def add(addresses: list[str] = typer.Argument(..., help="One or more addresses (at most 1000)."),
        reason: str = typer.Option(None, "--reason", help="Why (default: 'added by hand <date>')."),
        json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """Suppress addresses: sends to them are refused (SMTP 550 5.1.1, REST 422)."""
    body = {"addresses": addresses}
    if reason is not None:
        body["reason"] = reason
    rows = ApiClient(resolve(api_url, token)).post_json("/v1/suppressions", body)["data"]
    if json_out:
        print_json(rows)
        return
    for row in rows:
        console.print(f"[green]suppressed[/] {row['address']} ({row['reason']})", highlight=False)


@app.command()
def remove(address: str = typer.Argument(..., help="The address (any case or +tag variant of it)."),
           api_url: str = ApiUrlOption, token: str = TokenOption):
    """Take an address off the suppression list."""
    ApiClient(resolve(api_url, token)).request("DELETE", f"/v1/suppressions/{urllib.parse.quote(address, safe='@')}")
    console.print(f"[green]removed[/] {address}", highlight=False)
