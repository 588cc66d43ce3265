"""`inboxlayer mcp`: the MCP tools (inboxlayer_client/mcp_server.py) over stdio for a local agent.

The key and URL: --token / --api-url, else INBOXLAYER_TOKEN / INBOXLAYER_API_URL, else `inboxlayer
login`'s (as every client command). A client command: it loads no server stack.
"""
import inboxlayer_client as client_lib
from cli.client import ApiUrlOption
from cli.client import TokenOption
from cli.client import resolve
from cli.output import CliError
from inboxlayer_client.mcp_server import build_server


def mcp(api_url: str = ApiUrlOption, token: str = TokenOption):
    """Serve the MCP tools over stdio for a local agent (INBOXLAYER_TOKEN, INBOXLAYER_API_URL)."""
    credentials = resolve(api_url, token)
    try:
        client = client_lib.Inboxlayer(credentials.api_url, credentials.token, user_agent="inboxlayer-mcp/1")
    except client_lib.InboxlayerError as exc:
        raise CliError(str(exc), 2) from None
    build_server(lambda ctx: client).run("stdio")
