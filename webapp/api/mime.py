"""Build the MIME message for an API send (and for the CLI's `--via smtp`): stdlib only.

The message is written with CRLF line ends (policy SMTP), the form submit() stores and SES relays.
"""
import datetime
import email.utils
import secrets
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY


class MimeError(ValueError):
    """A field could not be put into a header (the message names it)."""


def build_message(sender, request, domain_for_ids):
    """An EmailMessage from a validated send request.

    ``sender`` is an email.headerregistry.Address (the inbox); ``request`` has to, cc, bcc,
    reply_to (Address lists), subject, text, html, headers [(name, value)] and attachments.
    The Bcc header stays in this copy (the Sent folder shows it); the relay strips it.
    """
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = sender
    if request.to:
        msg["To"] = request.to
    if request.cc:
        msg["Cc"] = request.cc
    if request.bcc:
        msg["Bcc"] = request.bcc
    if request.reply_to:
        msg["Reply-To"] = request.reply_to
    msg["Subject"] = request.subject
    msg["Date"] = email.utils.format_datetime(datetime.datetime.now(datetime.timezone.utc))
    msg["Message-ID"] = f"<{secrets.token_hex(16)}@{domain_for_ids}>"
    for name, value in request.headers:
        try:
            msg[name] = value
        except (ValueError, TypeError, IndexError) as exc:
            raise MimeError(f"headers.{name}: {exc}") from None
    if request.text is not None:
        msg.set_content(request.text)
        if request.html is not None:
            msg.add_alternative(request.html, subtype="html")
    else:
        msg.set_content(request.html, subtype="html")
    for item in request.attachments:
        msg.add_attachment(item.content, maintype=item.maintype, subtype=item.subtype,
                           filename=item.filename, disposition=item.disposition)
    return msg


def write_message(msg, spool):
    """Write ``msg`` to the binary file ``spool`` (CRLF); return its size in bytes."""
    BytesGenerator(spool, policy=SMTP_POLICY).flatten(msg)
    size = spool.tell()
    spool.seek(0)
    return size
