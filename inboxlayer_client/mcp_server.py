"""The Model Context Protocol server's tools, on the official `mcp` SDK's MCPServer.

Every tool calls the REST API through inboxlayer_client with one API key, so the key's scope
(inboxes, permissions, daily limit, sandbox) limits what an agent can see and do, exactly as over
REST. Over stdio (`inboxlayer mcp`, cli/mcp.py) the key and URL come from INBOXLAYER_TOKEN / INBOXLAYER_API_URL
(or `inboxlayer login`); over HTTP (``/mcp`` on the web process, webapp/mcp.py) from the request's
Bearer token. A refusal comes back as a tool error (``isError``) that says why and what to do,
never a traceback. docs/agents.md shows the host configuration.

Client side like the rest of this package: no server stack (tests/test_cli_layout.py).
"""
import base64
from collections.abc import Callable
from typing import Annotated
from typing import Any
from typing import Literal

import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel
from pydantic import Field

import inboxlayer_client as client_lib
from core.outbound_vocabulary import STATUSES

INSTRUCTIONS = (
    "Inboxlayer sends email for agents from your account's inboxes through Amazon SES. Send with "
    "send_email (it returns an outbound id like ob_...), then wait_for_outbound until it is 'sent' "
    "(SES accepted it) or 'delivered'. list_sent / read_sent_message read the copies kept in each inbox's "
    "Sent folder; get_usage shows today's quota; list_events reads what happened (deliveries, bounces, "
    "complaints) after a cursor. The API key this server uses decides which inboxes you may see and what "
    "you may do.")
MAX_WAIT = 600  # seconds: wait_for_outbound's ceiling per call (call again to wait longer)
DEFAULT_WAIT = 120

Inbox = Annotated[str, Field(description="An inbox address of this account, e.g. agent@example.com.",
                             min_length=3, max_length=320)]
OutboundId = Annotated[str, Field(description="The outbound email id send_email returned (ob_...).",
                                  min_length=3, max_length=64)]
Limit = Annotated[int, Field(description="How many items per page (1-100).", ge=1, le=100)]
Cursor = Annotated[str | None, Field(description="next_cursor from the previous page, to read on; "
                                                 "omit for the first page.")]
Status = Literal[STATUSES]  # type: ignore[valid-type]


class AttachmentInput(BaseModel):
    filename: Annotated[str, Field(description="File name shown to the recipient, e.g. report.pdf.",
                                   min_length=1, max_length=255)]
    content_base64: Annotated[str, Field(description="The file's bytes, base64-encoded.")]
    content_type: Annotated[str | None, Field(description="MIME type; guessed from the file name when "
                                                          "omitted.")] = None


def advice(exc):
    """One line for the model: what went wrong and what to do about it."""
    if isinstance(exc, client_lib.QuotaExceeded):
        when = f"; it resets at {exc.reset_at:%Y-%m-%d %H:%M} UTC" if exc.reset_at else ""
        return (f"{exc.message} [{exc.code}]{when}. Sending is refused until then: tell the user, or send "
                "fewer messages; other tools keep working.")
    if isinstance(exc, client_lib.RateLimited):
        wait = f"{exc.retry_after:g}s" if exc.retry_after is not None else "a few seconds"
        return f"{exc.message} [{exc.code}]. Wait {wait} and call the tool again."
    if isinstance(exc, client_lib.KeyScope):
        return (f"{exc.message} [{exc.code}]. The API key this server uses does not allow this: use an inbox the "
                "key covers (get_usage shows the key's inboxes and permissions), or ask the user for a key that "
                "does.")
    if isinstance(exc, client_lib.Unauthorized):
        return (f"{exc.message} [{exc.code}]. The API key is missing, revoked or expired: ask the user to set a "
                "valid INBOXLAYER_TOKEN (or Bearer token).")
    if isinstance(exc, client_lib.NotFound):
        return (f"{exc.message} [{exc.code}]. Check the id or address: list_outbound and list_sent list what "
                "exists.")
    if isinstance(exc, client_lib.InvalidRequest):
        return f"{exc.message} [{exc.code}]. Fix that argument and call the tool again."
    if isinstance(exc, client_lib.TemporaryFailure):
        return f"{exc.message} [{exc.code}]. The service is briefly unavailable: try again in a minute."
    if isinstance(exc, client_lib.ApiError):
        return f"{exc.message} [{exc.code}]."
    if isinstance(exc, client_lib.WaitTimeout):
        return (f"{exc}. Not an error in itself: call wait_for_outbound again to keep waiting, or "
                "get_outbound_status later.")
    return f"{exc}. Check INBOXLAYER_API_URL and that the Inboxlayer server is running."


def build_server(client_for: Callable[[Context], client_lib.Inboxlayer], in_thread: bool = True):
    """The MCP server. ``client_for(ctx)`` gives the Inboxlayer client for a tool call (stdio: the
    configured key; HTTP: the request's Bearer token). ``in_thread``: run each blocking client call
    on a worker thread (stdio, where one event loop serves the whole session); False runs it on the
    loop itself (the HTTP endpoint runs one private loop per request)."""
    server = MCPServer(name="inboxlayer", instructions=INSTRUCTIONS)

    async def call(ctx, method_name, *args, **kwargs):
        def run():
            client = client_for(ctx)
            return getattr(client, method_name)(*args, **kwargs)

        try:
            if in_thread:
                return await anyio.to_thread.run_sync(run)
            return run()
        except client_lib.InboxlayerError as exc:
            raise ToolError(advice(exc)) from None

    @server.tool()
    async def send_email(
            ctx: Context,
            from_inbox: Annotated[Inbox, Field(description="The inbox to send from (its address); the API key "
                                                          "must cover it.")],
            to: Annotated[list[str], Field(description="Recipient addresses (to + cc: at most 49).", min_length=1)],
            subject: Annotated[str, Field(description="Subject line.", max_length=998)],
            text: Annotated[str | None, Field(description="Plain-text body. Give text, html or both.")] = None,
            html: Annotated[str | None, Field(description="HTML body.")] = None,
            cc: Annotated[list[str] | None, Field(description="Cc addresses.")] = None,
            bcc: Annotated[list[str] | None, Field(description="Bcc addresses (not shown to the others).")] = None,
            reply_to: Annotated[str | None, Field(description="Reply-To address.")] = None,
            attachments: Annotated[list[AttachmentInput] | None,
                                   Field(description="Files to attach (25 MB per message in all).")] = None,
            idempotency_key: Annotated[str | None, Field(
                description="Any unique string for this message (e.g. a task id). Retrying with the same key "
                            "returns the first result instead of sending twice: use it whenever you might retry.",
                max_length=255)] = None) -> dict[str, Any]:
        """Send an email from one of the account's inboxes. Returns the outbound email (its `id`, ob_..., and
        `status`: 'queued', or 'sandboxed' with a sandbox key). Queued is not sent yet: call wait_for_outbound
        to learn when SES accepted it. Each recipient counts against the daily quota (get_usage);
        refusals: quota or rate limit reached, suppressed or not-allowed recipients, inbox paused, key scope."""
        files = []
        for item in attachments or []:
            try:
                content = base64.b64decode(item.content_base64, validate=True)
            except ValueError:
                raise ToolError(f"attachment {item.filename!r}: content_base64 is not valid base64. Encode the "
                                "file's bytes with base64 and call again.") from None
            files.append(client_lib.Attachment(item.filename, content, item.content_type))
        return await call(ctx, "send", from_inbox, to=to, subject=subject, text=text, html=html, cc=cc, bcc=bcc,
                          reply_to=reply_to, attachments=files, idempotency_key=idempotency_key)

    @server.tool()
    async def get_outbound_status(ctx: Context, outbound_id: OutboundId) -> dict[str, Any]:
        """The status of one sent email and its history: status (queued, sending, sent, delivered, bounced,
        complained, failed, sandboxed), recipients, attempts, last_error and the events with their times."""
        return await call(ctx, "get_outbound", outbound_id)

    @server.tool()
    async def wait_for_outbound(
            ctx: Context, outbound_id: OutboundId,
            until: Annotated[Literal["sent", "delivered"], Field(
                description="'sent': return once SES accepted it (seconds, usually); 'delivered': once the "
                            "recipient's server took it, or it bounced or drew a complaint (can take "
                            "minutes).")] = "sent",
            timeout_seconds: Annotated[int, Field(description=f"Give up after this long (1-{MAX_WAIT}).",
                                                  ge=1, le=MAX_WAIT)] = DEFAULT_WAIT) -> dict[str, Any]:
        """Wait until a sent email reaches `until`, or a final status (delivered, bounced, complained, failed,
        sandboxed), and return it. 'bounced', 'complained' and 'failed' mean it did not make it: last_error
        says why. On timeout the tool errs with the current status; call it again to keep waiting."""
        wanted = ("sent",) if until == "sent" else ()
        return await call(ctx, "wait_for_outbound", outbound_id, until=wanted, timeout=timeout_seconds)

    @server.tool()
    async def list_outbound(
            ctx: Context,
            status: Annotated[Status | None, Field(description="Only emails with this status.")] = None,
            inbox: Annotated[Inbox | None, Field(description="Only emails sent from this inbox.")] = None,
            limit: Limit = 20, cursor: Cursor = None) -> dict[str, Any]:
        """Emails sent from the inboxes the key covers, newest first: a page {data, has_more, next_cursor}."""
        return await call(ctx, "list_outbound", status=status, inbox=inbox, limit=limit, cursor=cursor)

    @server.tool()
    async def list_sent(ctx: Context, inbox: Inbox, limit: Limit = 20, cursor: Cursor = None) -> dict[str, Any]:
        """The Sent folder of one inbox, newest first: a page {data, has_more, next_cursor}; each message has
        its numeric `id` (for read_sent_message), subject, from, to, size and outbound_id."""
        return await call(ctx, "list_sent", inbox, limit=limit, cursor=cursor)

    @server.tool()
    async def read_sent_message(
            ctx: Context, inbox: Inbox,
            message_id: Annotated[int, Field(description="The message's numeric id from list_sent.", ge=1)]
    ) -> dict[str, Any]:
        """One message of an inbox's Sent folder as stored: headers, text and HTML bodies, and its attachments
        listed (name, type, size)."""
        return await call(ctx, "read_sent_message", inbox, message_id)

    @server.tool()
    async def get_usage(ctx: Context) -> dict[str, Any]:
        """The account's plan and today's sending quota (used, limit, left, resets_at: 00:00 UTC), the send rate,
        and this API key's scope (inboxes, permissions, daily limit, sandbox)."""
        return await call(ctx, "account")

    @server.tool()
    async def list_events(
            ctx: Context,
            after: Annotated[str | None, Field(description="next_cursor of the previous call: only events after "
                                                           "it. Omit to start at the oldest event retained.")] = None,
            type: Annotated[str | None, Field(description="Only these event types, comma-separated (e.g. "
                                                          "'outbound.delivered,outbound.bounced').")] = None,
            inbox: Annotated[Inbox | None, Field(description="Only events of this inbox (required for a key "
                                                             "scoped to some inboxes).")] = None,
            limit: Limit = 50) -> dict[str, Any]:
        """What happened to the account's mail, oldest first: a page {data, has_more, next_cursor}. Keep
        next_cursor and pass it as `after` next time to get only newer events."""
        return await call(ctx, "list_events", after=after, type=type, inbox=inbox, limit=limit)

    return server
