"""``/mcp``: the MCP tools (inboxlayer_client/mcp_server.py) over streamable HTTP on the web process, Bearer token auth.

The web process is Flask under gunicorn's gevent worker; the MCP SDK's transport is an ASGI app on
asyncio/anyio. Running an asyncio loop inside a greenlet is not sound (the running loop is tracked
per OS thread, so two greenlets' loops would collide), so each request runs the SDK in its stateless,
JSON-response mode on a fresh event loop in a real OS thread (a gevent ThreadPool): the request's
greenlet waits for that thread without blocking the others, and no MCP state outlives the request.

The tools reach the data the way every other client does: through inboxlayer_client, over HTTP,
to this same web process (the address the MCP request arrived on), with the request's own Bearer
token. So /mcp sees and does exactly what that key may over REST (one set of scope rules, audited
the same way), and the database work stays on gevent's greenlets, never in the helper thread.
"""
import asyncio
import contextvars
import functools
import ipaddress
import logging

from flask import Blueprint
from flask import Response
from flask import request
from gevent import monkey

import inboxlayer_client as client_lib
from webapp.api import errors as api_errors
from webapp.api.auth import authenticate
from webapp.api.errors import ApiError

bp = Blueprint("mcp", __name__)
api_errors.register(bp)

MCP_THREADS = 20  # concurrent /mcp requests per web worker; more wait for a free thread
MAX_BODY = 8 * 2**20  # bytes of JSON-RPC request: a send_email with a few MB of base64 attachments
_api_url = contextvars.ContextVar("inboxlayer_mcp_api_url")


def client_for(ctx):
    """The REST client for one tool call: this web process, with the MCP request's own token."""
    scheme, _, token = (ctx.headers or {}).get("authorization", "").strip().partition(" ")
    return client_lib.Inboxlayer(_api_url.get(), token, allow_plain_http=True, user_agent="inboxlayer-mcp-http/1")


@functools.cache
def protocol_server():
    """The SDK's protocol server behind the tools, built on first use (not at import: the SDK sets up
    logging when a server is built, and the web process configures its own first). It runs in the
    helper thread, so the SDK's import (about a second) never holds up the web worker's start or its
    greenlets."""
    from inboxlayer_client.mcp_server import build_server

    for name in ("mcp.server.streamable_http_manager", "mcp.server.streamable_http"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "session manager started" on every request
    server = build_server(client_for, in_thread=False)
    server.streamable_http_app(stateless_http=True, json_response=True)  # builds the SDK's session manager
    return server.session_manager.app  # each request gets its own stateless manager over it


@bp.route("/mcp", methods=["GET", "POST", "DELETE"])
def endpoint():
    authenticate()  # 401 before any MCP work: the tools would refuse this token anyway
    if request.method != "POST":
        # Stateless: no session to resume (GET) or end (DELETE); the transport's own answer.
        raise ApiError(405, "method_not_allowed", "POST JSON-RPC messages to /mcp (stateless, no sessions)",
                       {"Allow": "POST"})
    request.max_content_length = MAX_BODY
    body = request.get_data(cache=False)
    status, headers, content = _in_thread(_scope(), body, _self_url())
    hop_by_hop = ("content-length", "transfer-encoding", "connection")
    return Response(content, status=status, headers=[(k, v) for k, v in headers if k.lower() not in hop_by_hop])


def _self_url():
    """http://<the local address this request arrived on>: this process, whatever the Host header says
    (a header is the client's to choose; the token must not follow it)."""
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:
        host = "127.0.0.1" if ipaddress.ip_address(host).version == 4 else "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _scope():
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "scheme": request.scheme, "path": "/mcp", "raw_path": b"/mcp", "root_path": "",
            "query_string": request.query_string,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()],
            "client": (request.remote_addr or "", 0), "server": (request.host, 0)}


def _in_thread(scope, body, api_url):
    """Run the ASGI request on a private event loop in a real OS thread; the greenlet waits.
    Unpatched (the development server, tests' in-process app), the request's own thread is one."""
    if monkey.is_module_patched("threading"):
        return _pool().apply(_run, (scope, body, api_url))
    return _run(scope, body, api_url)


@functools.cache
def _pool():
    """MCP's own OS threads (created in the worker, after the fork): a pile of long
    wait_for_outbound calls must not take the hub's pool, which also resolves host names."""
    from gevent.threadpool import ThreadPool

    return ThreadPool(MCP_THREADS)


def _run(scope, body, api_url):
    _api_url.set(api_url)
    return asyncio.run(_serve(scope, body))


async def _serve(scope, body):
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    manager = StreamableHTTPSessionManager(app=protocol_server(), json_response=True, stateless=True)
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    answer = {"status": 500, "headers": [], "body": []}
    done = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop()
        await done.wait()  # the response is out: the client "disconnects"
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            answer["body"].append(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    async with manager.run():
        await manager.handle_request(scope, receive, send)
    return answer["status"], answer["headers"], b"".join(answer["body"])
