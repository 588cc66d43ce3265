"""`inboxlayer login` / `logout`: remember the API URL and token for the client commands."""
import typer

from cli.client import DEFAULT_API_URL
from cli.client import ApiClient
from cli.client import Credentials
from cli.client import check_url
from cli.client import credentials_path
from cli.client import load_credentials
from cli.client import save_credentials
from cli.output import CliError
from cli.output import console


def login(api_url: str = typer.Option(None, "--api-url", help=f"API base URL [default: {DEFAULT_API_URL}]."),
          token: str = typer.Option(None, "--token", help="API token (prompted for, hidden, if left out)."),
          smtp_host: str = typer.Option(None, help="SMTP server for `send --via smtp` (default: what the server "
                                                   "publishes at /v1/smtp)."),
          smtp_port: int = typer.Option(None, help="SMTP port for `send --via smtp` (default: the server's "
                                                   "STARTTLS port from /v1/smtp, else 587)."),
          verify: bool = typer.Option(True, help="Check the token against the API before saving it.")):
    """Store the API URL and token (0600) for send, status and outbound."""
    url = check_url(api_url or DEFAULT_API_URL)
    if not token:
        token = typer.prompt("API token", hide_input=True)
    token = token.strip()
    if not token:
        raise CliError("the token is empty", 2)
    who = None
    if verify:
        account = ApiClient(Credentials(api_url=url, token=token)).get("/v1/account")
        who = account.get("email")
    data = {key: value for key, value in load_credentials().items() if key in ("smtp_host", "smtp_port")}
    data.update(api_url=url, token=token)
    if smtp_host:
        data["smtp_host"] = smtp_host
    if smtp_port:
        data["smtp_port"] = smtp_port
    path = save_credentials(data)
    console.print(f"[green]logged in[/] to {url}" + (f" as {who}" if who else "") + f"; saved to {path}",
                  highlight=False, soft_wrap=True)


def logout():
    """Forget the stored token."""
    path = credentials_path()
    try:
        path.unlink()
    except FileNotFoundError:
        console.print("not logged in")
        return
    console.print(f"removed {path}", highlight=False, soft_wrap=True)
