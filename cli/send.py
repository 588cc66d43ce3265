"""`inboxlayer send`: send from an inbox through the REST API (default) or the SMTP server.

stdout gets the OutboundEmail id alone (or the JSON with --json), so scripts can capture it;
progress and live status go to stderr.
"""
import base64
import io
import json
import mimetypes
import re
import smtplib
import ssl
import tempfile
import urllib.parse
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import typer
from rich.progress import BarColumn
from rich.progress import DownloadColumn
from rich.progress import Progress
from rich.progress import TextColumn
from rich.progress import TransferSpeedColumn

from cli.client import ApiClient
from cli.client import ApiUrlOption
from cli.client import TokenOption
from cli.client import resolve
from cli.outbound import FINAL
from cli.outbound import check_outcome
from cli.outbound import fetch
from cli.outbound import wait_for
from cli.output import CliError
from cli.output import JsonOption
from cli.output import err_console
from cli.output import print_json
from core import ids

PROGRESS_THRESHOLD = 1024 * 1024  # bytes of request body above which an upload shows a progress bar
B64_CHUNK = 3 * 64 * 1024  # bytes read per base64 step (a multiple of 3: no padding mid-stream)
SMTP_TIMEOUT = 120  # seconds
SETTINGS_TIMEOUT = 15  # seconds for GET /v1/smtp before falling back to the defaults
DEFAULT_SMTP_PORT = 587  # submission (RFC 6409), when neither options nor the server say otherwise
IMPLICIT_TLS_PORT = 465  # submissions (RFC 8314)
QUEUED_AS = re.compile(rf"queued as ({ids.PATTERN})")


class Via(str, Enum):
    api = "api"
    smtp = "smtp"


class WaitFor(str, Enum):
    sent = "sent"
    delivered = "delivered"


def send(sender: str = typer.Option(..., "--from", help="The inbox to send from (its address)."),
         to: list[str] = typer.Option(None, "--to", help="Recipient; repeat for more.", show_default=False),
         cc: list[str] = typer.Option(None, "--cc", help="Cc recipient; repeatable.", show_default=False),
         bcc: list[str] = typer.Option(None, "--bcc", help="Bcc recipient; repeatable.", show_default=False),
         subject: str = typer.Option("", "--subject", "-s", help="Subject line."),
         text: str = typer.Option(None, "--text", help="Plain-text body."),
         text_file: Path = typer.Option(None, "--text-file", help="Plain-text body from a file ('-' = stdin).",
                                        allow_dash=True),
         html_file: Path = typer.Option(None, "--html-file", help="HTML body from a file."),
         attach: list[Path] = typer.Option(None, "--attach", help="Attach a file; repeatable.", show_default=False),
         reply_to: str = typer.Option(None, "--reply-to", help="Reply-To address."),
         header: list[str] = typer.Option(None, "--header", "-H", help="Extra header 'Name: value'; repeatable.",
                                          show_default=False),
         idempotency_key: str = typer.Option(None, "--idempotency-key", help="Retry-safe key (API only)."),
         via: Via = typer.Option(Via.api, "--via", help="Send through the REST API or the SMTP server."),
         wait: bool = typer.Option(False, "--wait", help="Wait until SES accepted it (sent) or it failed; "
                                                         "exit 4 on bounce/complaint/failure."),
         wait_for_status: WaitFor = typer.Option(WaitFor.sent, "--wait-for",
                                                 help="With --wait: 'sent' (SES accepted) or 'delivered' "
                                                      "(a delivery, bounce or complaint event arrived)."),
         timeout: float = typer.Option(300, help="With --wait: seconds before giving up (exit 3)."),
         smtp_host: str = typer.Option(None, help="SMTP server for --via smtp (default: from login, else what "
                                                  "the server publishes at /v1/smtp)."),
         smtp_port: int = typer.Option(None, help="SMTP port for --via smtp (default: from login, else the "
                                                  "server's STARTTLS port; its TLS port and 465 = implicit TLS)."),
         smtp_cafile: Path = typer.Option(None, help="CA bundle to trust for the SMTP server's certificate "
                                                     "(default: system CAs plus the dev certificate the "
                                                     "server publishes)."),
         json_out: bool = JsonOption, api_url: str = ApiUrlOption, token: str = TokenOption):
    """Send a message and print its OutboundEmail id."""
    body = _request_body(to, cc, bcc, subject, text, text_file, html_file, reply_to, header)
    attachments = [_readable(path) for path in attach or []]
    credentials = resolve(api_url, token)
    client = ApiClient(credentials)
    if via is Via.smtp:
        if idempotency_key:
            raise CliError("--idempotency-key works with --via api only", 2)
        outbound_id = _send_smtp(credentials, sender, body, attachments, smtp_host, smtp_port, smtp_cafile)
        if not (wait or json_out):
            print(outbound_id)  # the 250 is all there is to say; no API round trip needed
            return
        try:
            row = fetch(client, outbound_id)
        except CliError as exc:
            print(outbound_id)  # it WAS accepted: say so before the status failure
            raise CliError(f"{outbound_id} was queued over SMTP, but its status is unavailable: {exc}") from None
    else:
        row = _send_api(client, sender, body, attachments, idempotency_key)
    if wait:
        until = ("sent",) + FINAL if wait_for_status is WaitFor.sent else FINAL
        row = wait_for(client, row["id"], until, timeout)
        row = fetch(client, row["id"])
    if json_out:
        print_json(row)
    else:
        print(row["id"])
        if wait:
            err_console.print(f"{row['id']}: {row['status']}", highlight=False)
    check_outcome(row)


def _request_body(to, cc, bcc, subject, text, text_file, html_file, reply_to, headers):
    if not (to or cc or bcc):
        raise CliError("give at least one recipient: --to, --cc or --bcc", 2)
    if text is not None and text_file is not None:
        raise CliError("use --text or --text-file, not both", 2)
    if text_file is not None:
        text = _read_text(text_file)
    html = _read_text(html_file) if html_file is not None else None
    if text is None and html is None:
        raise CliError("give a body: --text, --text-file or --html-file", 2)
    body = {"to": list(to or []), "subject": subject}
    if cc:
        body["cc"] = list(cc)
    if bcc:
        body["bcc"] = list(bcc)
    if text is not None:
        body["text"] = text
    if html is not None:
        body["html"] = html
    if reply_to:
        body["reply_to"] = reply_to
    if headers:
        body["headers"] = dict(_header(h) for h in headers)
    return body


def _header(raw):
    name, sep, value = raw.partition(":")
    if not sep or not name.strip():
        raise CliError(f"--header {raw!r}: expected 'Name: value'", 2)
    return name.strip(), value.strip()


def _read_text(path):
    try:
        if str(path) == "-":
            return typer.get_text_stream("stdin").read()
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}", 2) from None


def _readable(path):
    if not path.is_file():
        raise CliError(f"--attach {path}: not a readable file", 2)
    return path


# -- via the REST API -----------------------------------------------------------------------------

def _send_api(client, sender, body, attachments, idempotency_key):
    with tempfile.TemporaryFile(prefix="inboxlayer-send-") as spool:
        _write_json_body(spool, body, attachments)
        size = spool.tell()
        spool.seek(0)
        if size < PROGRESS_THRESHOLD:
            return client.call(client.api.send_raw, sender, spool.read(), idempotency_key)
        with Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=err_console) as progress:
            task = progress.add_task("upload", total=size)
            reader = _ProgressReader(spool, lambda n: progress.advance(task, n))
            return client.call(client.api.send_raw, sender, reader, idempotency_key, length=size)


def _write_json_body(out, body, attachments):
    """The request JSON, with attachments base64-encoded from disk in chunks (never whole in memory)."""
    head = json.dumps(body)
    if not attachments:
        out.write(head.encode())
        return
    out.write(head[:-1].encode() + b', "attachments": [')
    for index, path in enumerate(attachments):
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        meta = json.dumps({"filename": path.name, "content_type": content_type})
        out.write((", " if index else "").encode() + meta[:-1].encode() + b', "content": "')
        with open(path, "rb") as f:
            while chunk := f.read(B64_CHUNK):
                out.write(base64.b64encode(chunk))
        out.write(b'"}')
    out.write(b"]}")


class _ProgressReader:
    def __init__(self, fileobj, advance):
        self.fileobj, self.advance = fileobj, advance

    def read(self, size=-1):
        chunk = self.fileobj.read(size)
        self.advance(len(chunk))
        return chunk


# -- via SMTP -------------------------------------------------------------------------------------

@dataclass
class SmtpTarget:
    host: str
    port: int
    implicit_tls: bool
    context: ssl.SSLContext


def smtp_target(credentials, host=None, port=None, cafile=None):
    """Where and how to submit. Options first, then what `login` stored, then what the server
    publishes at GET /v1/smtp (host, ports, and its self-signed certificate in development), then
    the API's host and port 587. Implicit TLS on port 465 and on the server's published TLS port."""
    host = host or credentials.smtp_host
    port = port or credentials.smtp_port
    published = {}
    if not (host and port and cafile):
        try:
            published = ApiClient(credentials, timeout=SETTINGS_TIMEOUT).get("/v1/smtp")
        except CliError:
            published = {}  # an older server, or the API is down: fall back to the defaults
    published = _published_settings(published)
    host = host or published.get("host") or urllib.parse.urlsplit(credentials.api_url).hostname
    port = port or published.get("starttls_port") or published.get("tls_port") or DEFAULT_SMTP_PORT
    implicit_tls = port == IMPLICIT_TLS_PORT or (port == published.get("tls_port")
                                                 and port != published.get("starttls_port"))
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"--smtp-cafile {cafile}: {exc}", 2) from None
    if published.get("certificate") and not cafile:
        try:
            context.load_verify_locations(cadata=published["certificate"])
        except (ssl.SSLError, ValueError) as exc:
            raise CliError(f"the certificate the server publishes at /v1/smtp is unusable: {exc}") from None
    return SmtpTarget(host=host, port=int(port), implicit_tls=implicit_tls, context=context)


def _published_settings(data):
    """Keep only well-typed fields of a /v1/smtp answer (the server may be older or not ours)."""
    if not isinstance(data, dict):
        return {}
    kinds = {"host": str, "starttls_port": int, "tls_port": int, "certificate": str}
    return {key: data[key] for key, kind in kinds.items()
            if isinstance(data.get(key), kind) and not isinstance(data.get(key), bool) and data[key]}


def _send_smtp(credentials, sender, body, attachments, host, port, cafile):
    """Submit over SMTP (STARTTLS, or implicit TLS on the TLS port) with the token as password;
    return the id from the server's `250 2.0.0 OK queued as ob_...`."""
    message, recipients = _build_mime(sender, body, attachments)
    target = smtp_target(credentials, host, port, cafile)
    host, port, context = target.host, target.port, target.context
    try:
        if target.implicit_tls:
            smtp = smtplib.SMTP_SSL(host, port, timeout=SMTP_TIMEOUT, context=context)
        else:
            smtp = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT)
        with smtp:
            smtp.ehlo()
            if not target.implicit_tls:
                smtp.starttls(context=context)
                smtp.ehlo()
            smtp.login(sender, credentials.token)
            _expect(smtp.mail(sender), 250, "MAIL FROM")
            for recipient in recipients:
                _expect(smtp.rcpt(recipient), (250, 251), f"RCPT TO:<{recipient}>")
            code, reply = smtp.data(message)
            _expect((code, reply), 250, "DATA")
    except smtplib.SMTPAuthenticationError as exc:
        raise CliError(f"SMTP login refused: {exc.smtp_code} {_text(exc.smtp_error)}") from None
    except smtplib.SMTPResponseException as exc:
        raise CliError(f"SMTP server refused: {exc.smtp_code} {_text(exc.smtp_error)}") from None
    except smtplib.SMTPException as exc:
        raise CliError(f"SMTP error: {exc}") from None
    except ssl.SSLError as exc:
        raise CliError(f"TLS with {host}:{port} failed: {exc}; pass --smtp-cafile for a private CA") from None
    except OSError as exc:
        raise CliError(f"cannot reach the SMTP server {host}:{port}: {exc}") from None
    match = QUEUED_AS.search(_text(reply))
    if not match:
        raise CliError(f"the SMTP server accepted the message but gave no id: 250 {_text(reply)}")
    return match.group(1)


def _expect(result, codes, step):
    code, reply = result
    codes = codes if isinstance(codes, tuple) else (codes,)
    if code not in codes:
        raise CliError(f"SMTP {step} refused: {code} {_text(reply)}")


def _text(reply):
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _build_mime(sender, body, attachments):
    """The same MIME the API would build, from the same validation (so both paths agree)."""
    # Imported on use, not for a cycle: only --via smtp needs it, and email_validator plus the
    # email package cost ~60-80 ms that `send` through the API and `send --help` would pay.
    from core import mail

    try:
        request = mail.send_request(body, max_recipients=10_000)
        sender_address = mail.address("--from", sender)
    except mail.Invalid as exc:
        raise CliError(exc.message, 2) from None
    for path in attachments:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        maintype, subtype = content_type.split("/", 1)
        request.attachments.append(mail.Attachment(filename=path.name, content=path.read_bytes(),
                                                   maintype=maintype, subtype=subtype))
    try:
        message = mail.build_message(sender_address, request, sender_address.domain)
    except mail.MimeError as exc:
        raise CliError(str(exc), 2) from None
    spool = io.BytesIO()
    mail.write_message(message, spool)
    return spool.getvalue(), request.envelope_recipients()
