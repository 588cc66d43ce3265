"""The CLI's side of the REST API: stored credentials, and inboxlayer_client (the project's one HTTP
client) with its errors as one-line CliErrors.

Credentials live in ``<config dir>/credentials.json`` (0600), where the config dir is
$INBOXLAYER_HOME or typer's app dir for "inboxlayer" (~/.config/inboxlayer on Linux).
INBOXLAYER_API_URL / INBOXLAYER_TOKEN override the file; --api-url / --token override both.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import typer

import inboxlayer_client as client_lib
from cli.output import CliError

CREDENTIALS_FILE = "credentials.json"
DEFAULT_API_URL = "http://127.0.0.1:8000"
TIMEOUT = client_lib.TIMEOUT
USER_AGENT = "inboxlayer-cli/1"

ApiUrlOption = typer.Option(None, "--api-url", help="API base URL (default: stored by `login`, or "
                                                    "$INBOXLAYER_API_URL).", show_default=False)
TokenOption = typer.Option(None, "--token", help="API token (default: stored by `login`, or $INBOXLAYER_TOKEN).",
                           show_default=False)


class ApiError(CliError):
    """The API refused the request: its status, code and message."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status, self.api_code, self.api_message = status, code, message
        self.headers = headers or {}


def config_dir():
    return Path(os.environ.get("INBOXLAYER_HOME") or typer.get_app_dir("inboxlayer"))


def credentials_path():
    return config_dir() / CREDENTIALS_FILE


def load_credentials():
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}; run `inboxlayer login` again") from None
    return data if isinstance(data, dict) else {}


def save_credentials(data):
    """Write the credentials file readable by its owner only (0600, directory 0700)."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / CREDENTIALS_FILE
    tmp = directory / f".{CREDENTIALS_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)  # in case a umask or an old file widened it
    os.replace(tmp, path)
    return path


@dataclass
class Credentials:
    api_url: str
    token: str
    smtp_host: str | None = None
    smtp_port: int | None = None


def resolve(api_url=None, token=None):
    """Credentials from options, then environment, then the stored file."""
    stored = load_credentials()
    url = api_url or os.environ.get("INBOXLAYER_API_URL") or stored.get("api_url") or DEFAULT_API_URL
    token = token or os.environ.get("INBOXLAYER_TOKEN") or stored.get("token")
    if not token:
        raise CliError("not logged in: run `inboxlayer login` or set INBOXLAYER_TOKEN", 2)
    return Credentials(api_url=check_url(url), token=token.strip(), smtp_host=stored.get("smtp_host"),
                       smtp_port=stored.get("smtp_port"))


def check_url(url):
    """The base URL, refused (exit 2) unless https:// or plain http:// to this machine (loopback):
    inboxlayer_client.check_url's rule, the token travels in every request."""
    try:
        return client_lib.check_url(url)
    except client_lib.TransportError as exc:
        raise CliError(str(exc), 2) from None


class ApiClient:
    """The commands' view of inboxlayer_client.Inboxlayer (the one HTTP client): the same calls,
    its errors turned into one-line CliErrors (ApiError keeps the status and code)."""

    def __init__(self, credentials, timeout=TIMEOUT):
        self.credentials = credentials
        self.base_url = credentials.api_url
        self.timeout = timeout
        self.api = client_lib.Inboxlayer(credentials.api_url, credentials.token, timeout=timeout,
                                         user_agent=USER_AGENT)

    def get(self, path, **query):
        return self.call(self.api.get, path, **query)

    def post_json(self, path, data, headers=None):
        return self.call(self.api.post_json, path, data, headers)

    def request(self, method, path, body=None, headers=None, length=None):
        """Send one request; return the decoded JSON. ``body`` is bytes or a binary file
        (then ``length`` is its size). Raises ApiError for refusals, CliError for transport."""
        return self.call(self.api.request, method, path, body, headers, length)

    def call(self, method, *args, **kwargs):
        """Run one Inboxlayer method; its errors as CliError (ApiError for the API's refusals)."""
        try:
            return method(*args, **kwargs)
        except client_lib.ApiError as exc:
            message = exc.message
            if exc.status == 401:
                message = f"{message}; check the token or run `inboxlayer login`"
            raise ApiError(exc.status, exc.code, message, exc.headers) from None
        except client_lib.WaitTimeout:
            raise  # the caller knows its exit code
        except client_lib.InboxlayerError as exc:
            raise CliError(str(exc)) from None
