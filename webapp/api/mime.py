"""Build the MIME message for an API send (and for the CLI's `--via smtp`): stdlib only.

The message is written with CRLF line ends (policy SMTP), the form submit() stores and SES relays.
"""
import datetime
import email.utils
import re
import secrets
from email.generator import BytesGenerator
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

# Address headers are written pre-folded (set_raw) and must be emitted as written; every other
# header is still folded by the email package at 78 characters.
OUTPUT_POLICY = SMTP_POLICY.clone(refold_source="none")
SPECIALS = re.compile(r'[][\\()<>@,:;".]')  # RFC 5322 specials: a display name with one is quoted
ESCAPES = re.compile(r'[\\"]')
LINE_BREAKS = set("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


class MimeError(ValueError):
    """A field could not be put into a header (the message names it)."""


def build_message(sender, request, domain_for_ids):
    """An EmailMessage from a validated send request.

    ``sender`` is an email.headerregistry.Address (the inbox); ``request`` has to, cc, bcc,
    reply_to (Address lists), subject, text, html, headers [(name, value)] and attachments.
    The Bcc header stays in this copy (the Sent folder shows it); the relay strips it.
    """
    msg = EmailMessage(policy=SMTP_POLICY)
    msg.set_raw("From", format_addresses([sender], "from"))
    for name, field, addresses in (("To", "to", request.to), ("Cc", "cc", request.cc), ("Bcc", "bcc", request.bcc),
                                   ("Reply-To", "reply_to", request.reply_to)):
        if addresses:
            msg.set_raw(name, format_addresses(addresses, field))
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


def format_addresses(addresses, field):
    """An address-list header value, one address a line.

    Written by hand because CPython's refolding of a long address list can drop the quotes
    around a display name that holds a special such as '@' (the header then names another
    address). Each ``Address`` (email.headerregistry) has an ASCII addr-spec (validated).
    """
    return ",\r\n ".join(_format_address(a, field) for a in addresses)


def _format_address(address, field):
    name = address.display_name or ""
    if any(c in LINE_BREAKS or (ord(c) < 32 and c != "\t") or ord(c) == 127 for c in name):
        raise MimeError(f"{field}: display name {name!r} must be one line without control characters")
    if not name:
        return address.addr_spec
    if not name.isascii():
        # RFC 2047 encoded-words of at most 75 characters, folded between words.
        encoded = Header(name, "utf-8", maxlinelen=76, header_name="To").encode(linesep="\r\n")
        return f"{encoded} <{address.addr_spec}>"
    if SPECIALS.search(name):
        return '"' + ESCAPES.sub(r"\\\g<0>", name) + f'" <{address.addr_spec}>'
    return f"{name} <{address.addr_spec}>"


def write_message(msg, spool):
    """Write ``msg`` to the binary file ``spool`` (CRLF); return its size in bytes."""
    BytesGenerator(spool, policy=OUTPUT_POLICY).flatten(msg)
    size = spool.tell()
    spool.seek(0)
    return size
