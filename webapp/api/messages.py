"""GET /v1/inboxes/{address}/messages[/{id}[.eml]]: the stored copies (the Sent folder)."""
from flask import jsonify
from flask import request
from flask import send_file
from peewee import JOIN

import models
from core import blobs
from core import mailview
from webapp.api.auth import owned_inbox
from webapp.api.errors import ApiError
from webapp.api.errors import Invalid
from webapp.api.outbound import iso
from webapp.api.pagination import paginate

FOLDERS = ("sent", "inbox")
MAX_BODY_CHARS = 1_000_000  # characters of text/html returned inline; the .eml has everything


def message_json(row):
    outbound = getattr(row, "outboundemail", None)
    return {"id": row.id, "folder": row.folder, "message_id": row.message_id, "subject": row.subject,
            "from": row.from_addr, "to": row.to_addrs, "size": row.size, "created_at": iso(row.created_at),
            "outbound_id": outbound.public_id if outbound and outbound.public_id else None}


def _query(inbox):
    return (models.Message.select(models.Message, models.OutboundEmail.public_id)
            .join(models.OutboundEmail, JOIN.LEFT_OUTER, on=(models.OutboundEmail.message == models.Message.id))
            .where(models.Message.inbox == inbox))


def list_messages(address):
    inbox = owned_inbox(address)
    folder = request.args.get("folder", "sent")
    if folder not in FOLDERS:
        raise Invalid("folder", f"must be one of {', '.join(FOLDERS)}")
    query = _query(inbox).where(models.Message.folder == folder)
    return jsonify(paginate(query, models.Message.id, message_json))


def _find(address, message_id):
    inbox = owned_inbox(address)
    row = _query(inbox).where(models.Message.id == message_id).first()
    if row is None:
        raise ApiError(404, "message_not_found", f"No message {message_id} in {inbox.address}")
    return row


def get_message(address, message_id):
    row = _find(address, message_id)
    with blobs.store().open(row.blob_key) as f:
        parsed = mailview.parse(f)
    data = message_json(row)
    data.update(_content(parsed))
    data["raw_url"] = f"/v1/inboxes/{row.inbox.address}/messages/{row.id}.eml"
    return jsonify(data)


def _content(parsed):
    """Headers, the text and html bodies and the attachment list of a message parsed by
    mailview.parse (bounded work: see mailview)."""
    headers = [{"name": name, "value": value} for name, value in mailview.all_headers(parsed)]
    bodies = {}
    for kind in ("plain", "html"):
        part = parsed.get_body(preferencelist=(kind,))
        try:
            bodies[kind] = part.get_content()[:MAX_BODY_CHARS] if part is not None else None
        except (LookupError, ValueError, AssertionError):  # unknown charset or broken encoding
            bodies[kind] = None
    attachments = [{"filename": filename, "content_type": content_type, "size": size}
                   for _, filename, content_type, size in mailview.attachment_parts(parsed)]
    return {"headers": headers, "text": bodies["plain"], "html": bodies["html"], "attachments": attachments}


def raw_message(address, message_id):
    row = _find(address, message_id)
    stream = blobs.store().open(row.blob_key)
    return send_file(stream, mimetype="message/rfc822", as_attachment=True,
                     download_name=f"{row.id}.eml", max_age=0)
