"""`inboxlayer events tail [--follow] [--json]`: the account's events as they happen (GET /v1/events).

Client side: stdlib and the API only. ``--follow`` polls the feed with the last cursor every
``POLL_INTERVAL`` and prints what is new, until interrupted."""
import json
import sys
import time

import typer

from cli.client import ApiClient
from cli.client import ApiUrlOption
from cli.client import TokenOption
from cli.client import resolve
from cli.output import CliError
from cli.output import JsonOption
from core.event_vocabulary import EVENT_TYPES

POLL_INTERVAL = 1.0  # seconds between feed requests with --follow
PAGE = 100

app = typer.Typer(help="Events: what happened to your mail, domains and inboxes.", no_args_is_help=True)


def line(event):
    """One event as one line: time, type, the outbound/inbox it is about, and its gist."""
    data = event.get("data") or {}
    about = event.get("outbound") or event.get("inbox") or data.get("domain") or ""
    gist = data.get("status") or ""
    bounce = data.get("bounce")
    if isinstance(bounce, dict):
        gist = f"{bounce.get('type')}/{bounce.get('sub_type')}"
    return f"{event['timestamp']}  {event['id']}  {event['type']:<26} {about}  {gist}".rstrip()


@app.command("tail")
def tail(follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events until Ctrl-C."),
         event_type: str = typer.Option(None, "--type", help="Only these types (comma-separated)."),
         inbox: str = typer.Option(None, "--inbox", help="Only events of this inbox."),
         since_start: bool = typer.Option(False, "--all", help="Start at the oldest event retained (default with "
                                                               "--follow: only new events)."),
         json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """Print the account's events; with --follow, as they happen."""
    if event_type is not None:
        unknown = [t for t in event_type.split(",") if t not in EVENT_TYPES]
        if unknown:
            raise CliError(f"--type: unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}", 2)
    client = ApiClient(resolve(api_url, token))
    cursor = None
    if follow and not since_start:
        cursor = _skip_to_end(client, event_type, inbox)
    if follow:
        sys.stderr.write("following events (Ctrl-C to stop)\n")
        sys.stderr.flush()
    try:
        while True:
            page = client.get("/v1/events", after=cursor, type=event_type, inbox=inbox, limit=PAGE)
            for event in page["data"]:  # one line each, flushed: a pipe sees each event as it comes
                sys.stdout.write((json.dumps(event) if json_out else line(event)) + "\n")
                sys.stdout.flush()
            cursor = page["next_cursor"]
            if page["has_more"]:
                continue
            if not follow:
                return
            time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        return


def _skip_to_end(client, event_type, inbox):
    """The cursor after the newest event now in the feed: --follow prints only what comes next."""
    cursor = None
    while True:
        page = client.get("/v1/events", after=cursor, type=event_type, inbox=inbox, limit=PAGE)
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return cursor
