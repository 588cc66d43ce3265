"""`inboxlayer webhooks ...`: webhook endpoints over the REST API (/v1/webhooks). Client side."""
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

app = typer.Typer(help="Webhook endpoints: where your events are POSTed, signed.", no_args_is_help=True)


def _path(endpoint_id, tail=""):
    return f"/v1/webhooks/{urllib.parse.quote(endpoint_id, safe='')}{tail}"


def _client(api_url, token):
    return ApiClient(resolve(api_url, token))


def _show(endpoint, json_out):
    if json_out:
        print_json(endpoint)
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name in ("id", "url", "events", "inbox", "enabled", "disabled_reason", "created_at"):
        value = endpoint.get(name)
        if name == "events":
            value = ", ".join(value) or "(every type)"
        table.add_row(name, "-" if value is None else str(value))
    console.print(table)
    if endpoint.get("secret"):
        console.print(f"secret: {endpoint['secret']}", highlight=False)
        err_console.print("[yellow]Store the secret now: it is not shown again.[/]")


@app.command("list")
def list_webhooks(json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """List webhook endpoints."""
    page = _client(api_url, token).get("/v1/webhooks")
    if json_out:
        print_json(page)
        return
    table = Table(Column("id", no_wrap=True), Column("url", overflow="fold"), "events", "inbox", "enabled")
    for row in page["data"]:
        table.add_row(row["id"], row["url"], ", ".join(row["events"]) or "(every type)", row["inbox"] or "-",
                      "yes" if row["enabled"] else f"no ({row['disabled_reason'] or 'by you'})")
    console.print(table)


@app.command("create")
def create(url: str = typer.Argument(..., help="Where to POST events (https in production)."),
           events: str = typer.Option(None, "--events", help="Event types, comma-separated (default: every type)."),
           inbox: str = typer.Option(None, "--inbox", help="Only events of this inbox."),
           json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """Create an endpoint and print its signing secret (shown once)."""
    body = {"url": url, "events": [e for e in (events or "").split(",") if e]}
    if inbox:
        body["inbox"] = inbox
    _show(_client(api_url, token).post_json("/v1/webhooks", body), json_out)


@app.command("update")
def update(endpoint_id: str = typer.Argument(..., help="wh_..."),
           url: str = typer.Option(None, "--url"),
           events: str = typer.Option(None, "--events", help="Event types, comma-separated; '' = every type."),
           enable: bool = typer.Option(None, "--enable/--disable"),
           json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """Change an endpoint's URL, event types or enabled flag."""
    body = {}
    if url is not None:
        body["url"] = url
    if events is not None:
        body["events"] = [e for e in events.split(",") if e]
    if enable is not None:
        body["enabled"] = enable
    client = _client(api_url, token)
    _show(client.request("PATCH", _path(endpoint_id), _json(body)), json_out)


def _json(body):
    import json

    return json.dumps(body).encode()


@app.command("delete")
def delete(endpoint_id: str = typer.Argument(..., help="wh_..."),
           api_url: str = ApiUrlOption, token: str = TokenOption):
    """Delete an endpoint and its delivery log."""
    _client(api_url, token).request("DELETE", _path(endpoint_id))
    err_console.print(f"deleted {endpoint_id}")


@app.command("rotate-secret")
def rotate_secret(endpoint_id: str = typer.Argument(..., help="wh_..."),
                  json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """New signing secret (the old one keeps signing for 24 h)."""
    _show(_client(api_url, token).post_json(_path(endpoint_id, "/rotate-secret"), {}), json_out)


@app.command("deliveries")
def deliveries(endpoint_id: str = typer.Argument(..., help="wh_..."),
               limit: int = typer.Option(20, "--limit", min=1, max=100),
               json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """The delivery log: each event, its status and attempts."""
    page = _client(api_url, token).get(_path(endpoint_id, "/deliveries"), limit=limit)
    if json_out:
        print_json(page)
        return
    table = Table(Column("event", no_wrap=True), "type", "status", "attempts", "last", Column("error", overflow="fold"))
    for row in page["data"]:
        last = row["log"][-1] if row["log"] else {}
        table.add_row(row["event"], row["type"], row["status"], str(row["attempts"]),
                      f"{last.get('status_code') or '-'} in {last.get('latency_ms', 0)} ms" if last else "-",
                      row["last_error"] or "")
    console.print(table)


@app.command("replay")
def replay(endpoint_id: str = typer.Argument(..., help="wh_..."),
           event: str = typer.Option(None, "--event", help="One event id (evt_...)."),
           since: str = typer.Option(None, "--since", help="Every event since this ISO time."),
           api_url: str = ApiUrlOption, token: str = TokenOption):
    """Deliver one event, or every event since a time, again (same event ids)."""
    body = {"event": event} if event else {"since": since}
    result = _client(api_url, token).post_json(_path(endpoint_id, "/replay"), body)
    err_console.print(f"replaying {result['replayed']} event(s)")


@app.command("test")
def send_test(endpoint_id: str = typer.Argument(..., help="wh_..."),
              api_url: str = ApiUrlOption, token: str = TokenOption):
    """Send a webhook.test event to the endpoint."""
    result = _client(api_url, token).post_json(_path(endpoint_id, "/test"), {})
    console.print(result["event"], highlight=False)
