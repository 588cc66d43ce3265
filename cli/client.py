"""The CLI's side of the REST API: stored credentials and a small HTTP client (stdlib only).

Credentials live in ``<config dir>/credentials.json`` (0600), where the config dir is
$INBOXLAYER_HOME or typer's app dir for "inboxlayer" (~/.config/inboxlayer on Linux).
INBOXLAYER_API_URL / INBOXLAYER_TOKEN override the file; --api-url / --token override both.
"""
import ipaddress
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import typer

from cli.output import CliError

CREDENTIALS_FILE = "credentials.json"
DEFAULT_API_URL = "http://127.0.0.1:8000"
TIMEOUT = 120  # seconds per request; a 25 MB upload on a slow link takes a while
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
    """The base URL, refused unless it is https:// or plain http:// to this machine (loopback):
    the token travels in every request, and plain http elsewhere would hand it to the network."""
    try:
        parsed = urllib.parse.urlsplit(url.strip())
        scheme, hostname = parsed.scheme, parsed.hostname
    except ValueError:  # e.g. an unclosed [IPv6 literal
        scheme = hostname = None
    if scheme not in ("http", "https") or not hostname:
        raise CliError(f"API URL {url!r} must be http(s)://host[:port]", 2)
    if scheme == "http" and not is_loopback(hostname):
        raise CliError(f"refusing to send the API token over plain http to {hostname}: use https://{parsed.netloc}"
                       " (plain http is allowed only for localhost, 127.0.0.0/8 and ::1)", 2)
    return url.strip().rstrip("/")


def is_loopback(hostname):
    if hostname.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would resend the Authorization header to wherever it points.
    The 3xx surfaces as an HTTPError and becomes an error naming the new location."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class ApiClient:
    def __init__(self, credentials, timeout=TIMEOUT):
        self.credentials = credentials
        self.base_url = credentials.api_url
        self.timeout = timeout

    def get(self, path, **query):
        query = {k: v for k, v in query.items() if v is not None}
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        return self.request("GET", path)

    def post_json(self, path, data, headers=None):
        return self.request("POST", path, json.dumps(data).encode(), headers)

    def request(self, method, path, body=None, headers=None, length=None):
        """Send one request; return the decoded JSON. ``body`` is bytes or a binary file
        (then ``length`` is its size). Raises ApiError for refusals, CliError for transport."""
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self.credentials.token}")
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", USER_AGENT)
        if body is not None:
            request.add_header("Content-Type", "application/json")
            request.add_header("Content-Length", str(length if length is not None else len(body)))
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with _opener.open(request, timeout=self.timeout) as response:
                if response.status == 204:  # No Content (a DELETE)
                    return None
                return _decode(response.read(), response.status, self.base_url)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                location = urllib.parse.urljoin(self.base_url + path, exc.headers.get("Location") or "")
                raise CliError(f"the API at {self.base_url} redirected {method} {path} to {location} "
                               f"(HTTP {exc.code}); not following it with the token: if that is the API, "
                               "use its address as --api-url") from None
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            raise CliError(f"cannot reach the API at {self.base_url}: {exc.reason}") from None
        except (socket.timeout, TimeoutError):
            raise CliError(f"the API at {self.base_url} did not answer within {self.timeout}s") from None
        except OSError as exc:
            raise CliError(f"connection to the API at {self.base_url} failed: {exc}") from None


def _decode(raw, status, base_url):
    if status == 204:
        return None  # No Content (a DELETE)
    try:
        return json.loads(raw)
    except ValueError:
        raise CliError(f"the server at {base_url} answered HTTP {status} with something that is not JSON; "
                       "is --api-url the Inboxlayer API?") from None


def _api_error(exc):
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    try:
        error = json.loads(raw)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"{exc.reason or 'request failed'}"
    if exc.code == 401:
        message = f"{message}; check the token or run `inboxlayer login`"
    return ApiError(exc.code, code, message, dict(exc.headers or {}))
