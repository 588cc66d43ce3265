"""`inboxlayer status ID` and `inboxlayer outbound list`: what happened to sent mail.

Exit codes shared with `send --wait`: 0 fine, 1 error, 2 usage, 3 timed out waiting,
4 the message bounced, drew a complaint or failed.
"""
import typer
from rich.table import Column
from rich.table import Table

import inboxlayer_client as client_lib
from cli.client import ApiClient
from cli.client import ApiUrlOption
from cli.client import TokenOption
from cli.client import resolve
from cli.output import CliError
from cli.output import JsonOption
from cli.output import console
from cli.output import err_console
from cli.output import print_json
# The lifecycle's own lists (stdlib-only module: no peewee or Flask comes with it).
from core.outbound_vocabulary import ACTIVE
from core.outbound_vocabulary import DELIVERED
from core.outbound_vocabulary import FINAL
from core.outbound_vocabulary import STATUSES
from core.outbound_vocabulary import UNDELIVERED

EXIT_TIMEOUT = 3
EXIT_UNDELIVERED = 4
POLL_INTERVAL = 1.0  # seconds between status requests while waiting

app = typer.Typer(help="Outbound emails: status and history of what was sent.", no_args_is_help=True)


def fetch(client, outbound_id):
    return client.call(client.api.get_outbound, outbound_id)


def style_of(status):
    """Red for undelivered, yellow while the relay works on it, green for delivered, cyan between."""
    if status not in STATUSES:
        return "white"
    if status in UNDELIVERED:
        return "red"
    if status in ACTIVE:
        return "yellow"
    return "green" if status == DELIVERED else "cyan"


def styled(status):
    return f"[{style_of(status)}]{status}[/]"


def wait_for(client, outbound_id, until, timeout):
    """Poll until the status is in ``until`` or final; show it live on stderr. Returns the row."""
    with err_console.status(f"{outbound_id}: waiting") as live:
        def show_progress(row):
            attempts = f", attempt {row['attempts']}" if row.get("attempts") else ""
            live.update(f"{outbound_id}: {styled(row['status'])}{attempts}")

        try:
            return client.call(client.api.wait_for_outbound, outbound_id, until=until, timeout=timeout,
                               interval=POLL_INTERVAL, on_poll=show_progress)
        except client_lib.WaitTimeout as exc:
            raise CliError(str(exc), EXIT_TIMEOUT) from None


def check_outcome(row):
    """Exit non-zero when the message did not make it (agents script on this)."""
    if row["status"] in UNDELIVERED:
        reason = f": {row['last_error']}" if row.get("last_error") else ""
        raise CliError(f"{row['id']} {row['status']}{reason}", EXIT_UNDELIVERED)


def show(row):
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    fields = [("id", row["id"]), ("status", styled(row["status"])), ("via", row["via"]), ("from", row["mail_from"]),
              ("to", ", ".join(row["recipients"])), ("subject", row.get("subject") or ""),
              ("message-id", row.get("message_id") or ""), ("ses id", row.get("ses_message_id") or "-"),
              ("attempts", str(row["attempts"])), ("created", row["created_at"]),
              ("sent", row.get("sent_at") or "-"), ("completed", row.get("completed_at") or "-")]
    if row.get("last_error"):
        fields.append(("last error", f"[red]{row['last_error']}[/]"))
    for name, value in fields:
        table.add_row(name, value)
    console.print(table)
    if row.get("events"):
        events = Table("when", "event", "detail", title="history", title_justify="left")
        for event in row["events"]:
            detail = ", ".join(f"{k}={v}" for k, v in event["detail"].items())
            events.add_row(event["occurred_at"], event["type"], detail)
        console.print(events)


def status(outbound_id: str = typer.Argument(..., help="OutboundEmail id (ob_...)."),
           watch: bool = typer.Option(False, "--watch", "-w", help="Follow it until delivered, bounced, "
                                                                    "complained or failed."),
           timeout: float = typer.Option(0, help="With --watch: give up after this many seconds (0 = never); "
                                                  "exit 3."),
           json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """Show an outbound email's status and history."""
    client = ApiClient(resolve(api_url, token))
    if watch:
        wait_for(client, outbound_id, FINAL, timeout)
    row = fetch(client, outbound_id)
    if json_out:
        print_json(row)
    else:
        show(row)
    check_outcome(row)


@app.command("list")
def list_outbound(status_filter: str = typer.Option(None, "--status", help=f"One of {', '.join(STATUSES)}."),
                  inbox: str = typer.Option(None, "--inbox", help="Only mail sent from this inbox."),
                  limit: int = typer.Option(20, "--limit", min=1, max=100, help="How many (newest first)."),
                  cursor: str = typer.Option(None, "--cursor", help="next_cursor of a previous --json page."),
                  json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """List outbound emails, newest first."""
    if status_filter is not None and status_filter not in STATUSES:
        raise CliError(f"--status must be one of {', '.join(STATUSES)}", 2)
    client = ApiClient(resolve(api_url, token))
    page = client.get("/v1/outbound", status=status_filter, inbox=inbox, limit=limit, cursor=cursor)
    if json_out:
        print_json(page)
        return
    # Ids and addresses are for pasting into other commands: never cut them with an ellipsis.
    id_width = max((len(row["id"]) for row in page["data"]), default=2)
    table = Table(Column("id", no_wrap=True, min_width=id_width), Column("status", no_wrap=True),
                  Column("from", overflow="fold"), Column("to", overflow="fold"), "subject",
                  Column("created", overflow="fold"))
    for row in page["data"]:
        recipients = row["recipients"]
        to = recipients[0] + (f" +{len(recipients) - 1}" if len(recipients) > 1 else "")
        table.add_row(row["id"], styled(row["status"]), row["inbox"], to, row.get("subject") or "", row["created_at"])
    console.print(table)
    if page["has_more"]:
        err_console.print(f"[dim]more: --cursor {page['next_cursor']}[/]", highlight=False)
