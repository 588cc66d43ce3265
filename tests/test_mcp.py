"""The MCP server driven by the official SDK's own clients against the real stack: `inboxlayer mcp`
as a child process over stdio (mcp.client.stdio) in front of the API on a real socket, and ``/mcp``
on the web process under gunicorn's gevent worker (mcp.client.streamable_http) with a relay worker
and the SES stand-in. Nothing is mocked."""
import base64
import datetime
import json
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import requests
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

import models
from core import accounts
from core import keys
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {"send_email", "get_outbound_status", "wait_for_outbound", "list_outbound", "list_sent",
         "read_sent_message", "get_usage", "list_events"}


@asynccontextmanager
async def stdio_session(subprocess_env, api_url, token):
    env = {**subprocess_env, "INBOXLAYER_API_URL": api_url, "INBOXLAYER_TOKEN": token,
           "INBOXLAYER_HOME": "/nonexistent"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "cli", "mcp"], env=env, cwd=str(ROOT))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def http_session(url, token):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http, \
            streamable_http_client(f"{url}/mcp", http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


def run(session_factory, steps):
    """Open an MCP session, run ``await steps(session)``, return its result (sync test, anyio loop)."""
    async def main():
        async with session_factory() as session:
            return await steps(session)

    return anyio.run(main)


def ok(result):
    assert not result.is_error, result.content
    return result.structured_content


def error_text(result):
    assert result.is_error, result.structured_content
    (block,) = result.content
    assert "Traceback" not in block.text and "File \"" not in block.text
    return block.text


def healthy(url):
    try:
        return requests.get(f"{url}/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def next_midnight():
    now = datetime.datetime.now(datetime.timezone.utc)
    return (now + datetime.timedelta(days=1)).strftime("%Y-%m-%d 00:00")


def scoped_key(account, *inboxes):
    with models.db.connection_context():
        scope = keys.Scope(inbox_ids=frozenset(i.id for i in inboxes), permissions=frozenset({"send", "read"}))
        return accounts.create_token(account.user, "scoped", scope)[1]


def second_inbox(account, config):
    with models.db.connection_context():
        return accounts.create_inbox(account.user, "other", None, config["server"]["default_domain"])


async def send(session, sender, **extra):
    arguments = {"from_inbox": sender, "to": ["bob@example.com"], "subject": "From MCP", "text": "Hello from MCP"}
    return await session.call_tool("send_email", {**arguments, **extra})


# -- stdio ----------------------------------------------------------------------------------------

def test_mcp_stdio_tools_send_wait_sent_and_read_back(subprocess_env, api_server, account, start_worker, ses_sent):
    start_worker()
    attachment = base64.b64encode(b"col\n1\n").decode()

    async def steps(session):
        listed = (await session.list_tools()).tools
        sent = ok(await send(session, account.address, idempotency_key="task-7", attachments=[
            {"filename": "data.csv", "content_base64": attachment}]))
        again = ok(await send(session, account.address, idempotency_key="task-7", attachments=[
            {"filename": "data.csv", "content_base64": attachment}]))
        waited = ok(await session.call_tool("wait_for_outbound", {"outbound_id": sent["id"], "timeout_seconds": 60}))
        status = ok(await session.call_tool("get_outbound_status", {"outbound_id": sent["id"]}))
        outbound = ok(await session.call_tool("list_outbound", {"inbox": account.address}))
        sent_folder = ok(await session.call_tool("list_sent", {"inbox": account.address}))
        message = ok(await session.call_tool("read_sent_message", {"inbox": account.address,
                                                                  "message_id": sent_folder["data"][0]["id"]}))
        usage = ok(await session.call_tool("get_usage", {}))
        for _ in range(60):  # the feed shows an event once it is a second old (core/events.py SETTLE)
            events = ok(await session.call_tool("list_events", {"type": "outbound.queued"}))
            if events["data"]:
                break
            await anyio.sleep(0.25)
        return listed, sent, again, waited, status, outbound, sent_folder, message, usage, events

    listed, sent, again, waited, status, outbound, sent_folder, message, usage, events = run(
        lambda: stdio_session(subprocess_env, api_server, account.token), steps)
    assert {tool.name for tool in listed} == TOOLS
    schemas = {tool.name: tool.input_schema for tool in listed}
    assert schemas["send_email"]["required"] == ["from_inbox", "to", "subject"]
    assert schemas["wait_for_outbound"]["properties"]["timeout_seconds"]["maximum"] == 600
    assert all(tool.description and len(tool.description) > 60 for tool in listed)
    assert sent["status"] == "queued" and sent["id"].startswith("ob_")
    assert again["id"] == sent["id"]  # the idempotency key: one message, not two
    assert waited["status"] == "sent" and waited["ses_message_id"]
    assert status["status"] == "sent" and [e["type"] for e in status["events"]][0] == "queued"
    assert [row["id"] for row in outbound["data"]] == [sent["id"]]
    assert sent_folder["data"][0]["outbound_id"] == sent["id"]
    assert message["subject"] == "From MCP"
    assert usage["quota"]["used"] == 1 and usage["email"] == account.email
    assert [e["data"]["id"] for e in events["data"] if e["type"] == "outbound.queued"] == [sent["id"]]
    (relayed,) = [m for m in ses_sent() if m["id"] == waited["ses_message_id"]]
    assert "data.csv" in relayed["raw_data"]


def test_mcp_stdio_scoped_key_cannot_see_another_inbox(subprocess_env, api_server, api, account, config):
    other = second_inbox(account, config)
    foreign = api.post(f"/v1/inboxes/{other.address}/send", json={"to": ["x@example.com"], "subject": "Secret",
                                                                  "text": "not for the scoped key"}).json()
    mine = api.post(f"/v1/inboxes/{account.address}/send", json={"to": ["y@example.com"], "subject": "Mine",
                                                                 "text": "hi"}).json()
    with models.db.connection_context():
        foreign_message_id = models.OutboundEmail.get(models.OutboundEmail.public_id == foreign["id"]).message_id
    token = scoped_key(account, account.inbox)

    async def steps(session):
        refusals = {
            "send": await send(session, other.address),
            "status": await session.call_tool("get_outbound_status", {"outbound_id": foreign["id"]}),
            "wait": await session.call_tool("wait_for_outbound", {"outbound_id": foreign["id"], "timeout_seconds": 1}),
            "list_outbound": await session.call_tool("list_outbound", {"inbox": other.address}),
            "list_sent": await session.call_tool("list_sent", {"inbox": other.address}),
            "read": await session.call_tool("read_sent_message", {"inbox": other.address,
                                                                  "message_id": foreign_message_id}),
            "events_all": await session.call_tool("list_events", {}),
            "events_other": await session.call_tool("list_events", {"inbox": other.address}),
        }
        listed = ok(await session.call_tool("list_outbound", {}))
        events = ok(await session.call_tool("list_events", {"inbox": account.address}))
        usage = ok(await session.call_tool("get_usage", {}))
        return refusals, listed, events, usage

    refusals, listed, events, usage = run(lambda: stdio_session(subprocess_env, api_server, token), steps)
    texts = {name: error_text(result) for name, result in refusals.items()}
    for name in ("send", "list_sent", "read", "events_all", "events_other"):
        assert "[key_scope]" in texts[name] and "API key this server uses does not allow this" in texts[name], name
    for name in ("status", "wait"):
        assert "[outbound_not_found]" in texts[name], name  # a scoped key cannot tell foreign from missing
    assert "inbox" in texts["list_outbound"]
    assert [row["id"] for row in listed["data"]] == [mine["id"]]
    assert all(foreign["id"] not in json.dumps(e) for e in events["data"])
    assert usage["token"]["inboxes"] == [account.address]


def test_mcp_stdio_quota_refusal_is_a_tool_error_with_the_reset_time(subprocess_env, api_server, account, config,
                                                                    reconfigure):
    config["plans"]["free"]["daily_send_limit"] = 1
    reconfigure()

    async def steps(session):
        return ok(await send(session, account.address)), await send(session, account.address)

    first, refused = run(lambda: stdio_session(subprocess_env, api_server, account.token), steps)
    assert first["status"] == "queued"
    text = error_text(refused)
    assert text.startswith("Error executing tool send_email: Daily sending quota exceeded (1/1, resets 00:00 UTC) "
                           "[quota_exceeded]; "
                           f"it resets at {next_midnight()} UTC.")


def test_mcp_stdio_bad_url_or_token_is_one_line(run_cli, account):
    result = run_cli("mcp", env={"INBOXLAYER_TOKEN": account.token, "INBOXLAYER_API_URL": "http://api.example.com"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: refusing to send the API token over plain http to api.example.com")
    result = run_cli("mcp", env={"INBOXLAYER_TOKEN": None, "INBOXLAYER_API_URL": None})
    assert result.returncode == 2 and "not logged in" in result.stderr


# -- streamable HTTP on the web process (gunicorn, gevent worker) ---------------------------------

def test_mcp_http_on_gunicorn_gevent(cluster, account, config):
    config["plans"]["free"]["daily_send_limit"] = 2
    other = second_inbox(account, config)
    cluster.worker()
    web = cluster.web()
    wait_until(lambda: healthy(web.url), timeout=60, what="web up")
    scoped = scoped_key(account, account.inbox)

    async def full(session):
        listed = (await session.list_tools()).tools
        sent = ok(await send(session, account.address))
        waited = ok(await session.call_tool("wait_for_outbound", {"outbound_id": sent["id"], "timeout_seconds": 60}))
        foreign = ok(await send(session, other.address))
        refused = await send(session, account.address)  # the third of 2 today
        return listed, sent, waited, foreign, refused

    listed, sent, waited, foreign, refused = run(lambda: http_session(web.url, account.token), full)
    assert {tool.name for tool in listed} == TOOLS
    assert waited["id"] == sent["id"] and waited["status"] == "sent"
    assert error_text(refused).startswith("Error executing tool send_email: Daily sending quota exceeded (2/2, resets "
                                          "00:00 UTC) [quota_exceeded]; "
                                          f"it resets at {next_midnight()} UTC.")

    async def narrow(session):
        return (await session.call_tool("get_outbound_status", {"outbound_id": foreign["id"]}),
                await session.call_tool("list_sent", {"inbox": other.address}),
                ok(await session.call_tool("list_outbound", {})))

    status, sent_folder, listed_outbound = run(lambda: http_session(web.url, scoped), narrow)
    assert "[outbound_not_found]" in error_text(status)
    assert "[key_scope]" in error_text(sent_folder)
    assert [row["id"] for row in listed_outbound["data"]] == [sent["id"]]

    # No MCP work without a valid Bearer token: the REST 401, before any tool.
    denied = requests.post(f"{web.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=10,
                           headers={"Authorization": "Bearer il_not-a-real-token", "Accept": "application/json"})
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
    assert "Traceback" not in cluster.logs()


def test_mcp_http_wait_holds_up_neither_the_worker_nor_other_mcp_calls(cluster, account):
    """A wait_for_outbound runs on its own OS thread: while it waits (no relay worker, so the message
    stays queued), the same gevent worker answers REST and other /mcp calls at once."""
    web = cluster.web()
    wait_until(lambda: healthy(web.url), timeout=60, what="web up")
    sent = run(lambda: http_session(web.url, account.token), lambda session: send(session, account.address))
    outbound_id = ok(sent)["id"]
    timings = {}

    async def steps(session):
        async def waiter():
            started = anyio.current_time()
            timings["wait_result"] = await session.call_tool("wait_for_outbound", {"outbound_id": outbound_id,
                                                                                   "timeout_seconds": 4})
            timings["wait"] = anyio.current_time() - started

        async with http_session(web.url, account.token) as other, anyio.create_task_group() as tasks:
            tasks.start_soon(waiter)
            await anyio.sleep(1)  # the wait is in progress on the server
            started = anyio.current_time()
            timings["usage_result"] = await other.call_tool("get_usage", {})
            timings["usage"] = anyio.current_time() - started
            started = anyio.current_time()
            timings["healthz_ok"] = await anyio.to_thread.run_sync(healthy, web.url)
            timings["healthz"] = anyio.current_time() - started

    run(lambda: http_session(web.url, account.token), steps)
    assert ok(timings["usage_result"])["quota"]["used"] == 1
    assert timings["usage"] < 2 and timings["healthz_ok"] and timings["healthz"] < 1, timings
    assert "is still queued after 4s" in error_text(timings["wait_result"])
    assert 4 <= timings["wait"] < 10, timings
