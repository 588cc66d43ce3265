"""Mail, pure: the send-request rules (validation of the JSON a client sends, every refusal an
``Invalid`` naming the field) and the MIME message built from a valid request. Stdlib and
email_validator only: the REST API, the CLI's ``send --via smtp`` and submit() share it.

Anything that ends up in a header is checked here for CR, LF and other control characters,
so a field value can never add a header or a MIME part of its own (header injection).
The message is written with CRLF line ends (policy SMTP), the form submit() stores and SES relays.
"""
import base64
import binascii
import dataclasses
import datetime
import email.utils
import mimetypes
import re
import secrets
from email.generator import BytesGenerator
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import email_validator

from core.text import BIDI_CONTROLS
from core.text import ENCODED_WORD
from core.text import LINE_BREAKS

# SES takes at most 50 addresses per message and counts the To: and Cc: header addresses with
# each call's envelope recipients (the relay sends at least one per call), so a message listing
# 50 or more there can never be sent: it is refused for SMTP (submit) and REST (send_request) alike.
SES_MAX_ADDRESSES = 50  # per SendEmail call, as transport.SES_MAX_RECIPIENTS (the transport imports boto3)
MAX_LISTED_RECIPIENTS = SES_MAX_ADDRESSES - 1
MAX_SUBJECT = 998  # characters; RFC 5322 2.1.1 line limit, before encoding
MAX_HEADER_VALUE = 998  # characters
MAX_CUSTOM_HEADERS = 50
MAX_ATTACHMENTS = 100
MAX_FILENAME = 255  # characters
MAX_DISPLAY_NAME = 100  # characters
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,75}")  # RFC 5322 field-name, narrowed
CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
# Headers the API builds itself; letting callers set them would forge structure or origin.
RESERVED_HEADERS = {
    "from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "content-disposition", "content-id", "return-path",
    "received", "dkim-signature", "arc-seal", "arc-message-signature", "arc-authentication-results",
    "authentication-results", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc",
    "resent-date", "resent-message-id",
}
# SES acts on X-SES-* headers in raw mail (configuration set, source ARN, tags): ours to set, not
# the sender's, or a message could slip out of event publishing or borrow another identity.
RESERVED_PREFIXES = ("content-", "mime-", "resent-", "arc-", "x-ses-")
SEND_FIELDS = {"to", "cc", "bcc", "subject", "text", "html", "reply_to", "headers", "attachments"}
ATTACHMENT_FIELDS = {"filename", "content", "content_type", "disposition"}


@dataclasses.dataclass
class Attachment:
    filename: str
    content: bytes
    maintype: str
    subtype: str
    disposition: str = "attachment"


@dataclasses.dataclass
class SendRequest:
    to: list
    cc: list
    bcc: list
    subject: str
    text: str | None
    html: str | None
    reply_to: list
    headers: list = dataclasses.field(default_factory=list)  # [(name, value)]
    attachments: list = dataclasses.field(default_factory=list)

    def envelope_recipients(self):
        """Unique addr-specs of to + cc + bcc, in order (each counts once against the quota)."""
        seen = {}
        for address in self.to + self.cc + self.bcc:
            seen.setdefault(address.addr_spec.lower(), address.addr_spec)
        return list(seen.values())




class Invalid(ValueError):
    """A field of a send request is refused: ``field`` names it, ``message`` is "field: reason"
    (the REST API answers 422 with ``code``)."""

    def __init__(self, field, reason, code="invalid_request"):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason, self.code, self.message = field, reason, code, f"{field}: {reason}"


def reject_unknown(body, allowed, where=""):
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(f"{where}{unknown[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def text(name, value, max_length=None, single_line=False, required=False):
    """A string field: valid Unicode, bounded, and free of control characters where it matters."""
    if value is None:
        if required:
            raise Invalid(name, "is required")
        return None
    if not isinstance(value, str):
        raise Invalid(name, "must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(name, "is not valid Unicode (lone surrogate)") from None
    if max_length is not None and len(value) > max_length:
        raise Invalid(name, f"must be at most {max_length} characters")
    if "\x00" in value:
        raise Invalid(name, "must not contain NUL characters")
    # str.splitlines() also breaks at \x1c-\x1e, \x85, \u2028 and \u2029, and so does the email
    # package when it folds a header: those are line breaks here too.
    if single_line and any(c in LINE_BREAKS or ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value):
        raise Invalid(name, "must be one line without control characters")
    if single_line and ENCODED_WORD.search(value):
        raise Invalid(name, "must not contain RFC 2047 encoded-words (=?charset?q?...?=): send the text itself, "
                            "it is encoded as needed")
    return value


def address(name, value):
    """One address, "addr@domain" or "Display Name <addr@domain>", as an email Address."""
    value = text(name, value, max_length=MAX_DISPLAY_NAME + 260, single_line=True, required=True)
    display, addr_spec = _split_address(name, value)
    try:
        checked = email_validator.validate_email(addr_spec, check_deliverability=False, allow_smtputf8=False)
    except email_validator.EmailNotValidError as exc:
        raise Invalid(name, f"{addr_spec!r} is not a valid address: {exc}") from None
    local, _, domain = checked.ascii_email.rpartition("@")
    try:
        return Address(display_name=display, username=local, domain=domain)
    except (ValueError, IndexError) as exc:
        raise Invalid(name, f"{value!r} is not a valid address: {exc}") from None


def _split_address(name, value):
    value = value.strip()
    match = re.fullmatch(r'(.*?)\s*<([^<>]*)>', value)
    if not match:
        if any(c in value for c in '<>",;'):
            raise Invalid(name, f"{value!r} is not a valid address")
        return "", value
    display = match.group(1).strip()
    if len(display) >= 2 and display[0] == display[-1] == '"':
        display = display[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if len(display) > MAX_DISPLAY_NAME:
        raise Invalid(name, f"display name must be at most {MAX_DISPLAY_NAME} characters")
    if "<" in display or ">" in display:
        raise Invalid(name, f"{value!r} is not a valid address")
    return display, match.group(2).strip()


def address_list(name, value):
    """A string or a list of strings, each one address."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise Invalid(name, "must be an address or a list of addresses")
    return [address(f"{name}[{i}]", item) for i, item in enumerate(value)]


def custom_headers(value):
    if value is None:
        return []
    if not isinstance(value, dict):
        raise Invalid("headers", "must be an object of header names to string values")
    if len(value) > MAX_CUSTOM_HEADERS:
        raise Invalid("headers", f"at most {MAX_CUSTOM_HEADERS} headers")
    result = []
    for header, header_value in value.items():
        if not HEADER_NAME.fullmatch(header):
            raise Invalid(f"headers.{header[:80]}", "is not a valid header name (letters, digits and '-')")
        if header.lower() in RESERVED_HEADERS or header.lower().startswith(RESERVED_PREFIXES):
            raise Invalid(f"headers.{header}", "is set by Inboxlayer and cannot be overridden; use the "
                                               "request's own fields")
        header_value = text(f"headers.{header}", header_value, MAX_HEADER_VALUE, single_line=True, required=True)
        result.append((header, header_value))
    return result


def attachments(value):
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid("attachments", "must be a list")
    if len(value) > MAX_ATTACHMENTS:
        raise Invalid("attachments", f"at most {MAX_ATTACHMENTS} attachments")
    return [attachment(f"attachments[{i}]", item) for i, item in enumerate(value)]


def attachment(name, value):
    if not isinstance(value, dict):
        raise Invalid(name, "must be an object with filename and content")
    reject_unknown(value, ATTACHMENT_FIELDS, f"{name}.")
    filename = text(f"{name}.filename", value.get("filename"), MAX_FILENAME, single_line=True, required=True)
    if not filename.strip() or "/" in filename or "\\" in filename:
        raise Invalid(f"{name}.filename", "must be a plain file name")
    bidi = next((c for c in filename if c in BIDI_CONTROLS), None)
    if bidi is not None:  # "invoice\u202efdp.exe" reads as "invoiceexe.pdf"
        raise Invalid(f"{name}.filename", f"must not contain bidirectional control characters (U+{ord(bidi):04X}), "
                                          "which can disguise a file's real type")
    encoded = text(f"{name}.content", value.get("content"), required=True)
    try:
        content = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{name}.content", "must be standard base64") from None
    content_type = text(f"{name}.content_type", value.get("content_type"), 128, single_line=True)
    if content_type is None:
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    content_type = content_type.strip().lower()
    if not CONTENT_TYPE.fullmatch(content_type) or content_type.startswith("multipart/"):
        raise Invalid(f"{name}.content_type", "must be a MIME type such as application/pdf (not multipart)")
    disposition = value.get("disposition", "attachment")
    if disposition not in ("attachment", "inline"):
        raise Invalid(f"{name}.disposition", "must be 'attachment' or 'inline'")
    maintype, subtype = content_type.split("/")
    return Attachment(filename=filename, content=content, maintype=maintype, subtype=subtype,
                      disposition=disposition)


def send_request(body, max_recipients):
    reject_unknown(body, SEND_FIELDS)
    parsed = SendRequest(
        to=address_list("to", body.get("to")),
        cc=address_list("cc", body.get("cc")),
        bcc=address_list("bcc", body.get("bcc")),
        subject=text("subject", body.get("subject"), MAX_SUBJECT, single_line=True) or "",
        text=text("text", body.get("text")),
        html=text("html", body.get("html")),
        reply_to=address_list("reply_to", body.get("reply_to")),
        headers=custom_headers(body.get("headers")),
        attachments=attachments(body.get("attachments")),
    )
    recipients = parsed.envelope_recipients()
    if not recipients:
        raise Invalid("to", "at least one recipient is required (to, cc or bcc)")
    if len(recipients) > max_recipients:
        raise Invalid("to", f"too many recipients: {len(recipients)} (at most {max_recipients} per message "
                            "across to, cc and bcc)")
    listed = len(parsed.to) + len(parsed.cc)
    if listed > MAX_LISTED_RECIPIENTS:  # the rule submit() applies to SMTP too
        raise Invalid("to", f"too many addresses in to and cc: {listed} (at most {MAX_LISTED_RECIPIENTS}: SES "
                            "counts them with every batch of recipients; put the rest in bcc)")
    if parsed.text is None and parsed.html is None:
        raise Invalid("text", "text or html is required")
    return parsed


# -- the MIME message ----------------------------------------------------------------------------

# Address headers are written pre-folded (set_raw) and must be emitted as written; every other
# header is still folded by the email package at 78 characters.
OUTPUT_POLICY = SMTP_POLICY.clone(refold_source="none")
SPECIALS = re.compile(r'[][\\()<>@,:;".]')  # RFC 5322 specials: a display name with one is quoted
ESCAPES = re.compile(r'[\\"]')


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
