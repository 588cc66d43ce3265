"""GET /v1/inboxes/{address}/messages[/{id}[.eml]]: the stored copies (the Sent folder)."""
from flask import jsonify
from flask import request
from flask import send_file
from peewee import JOIN

import models
from core import blobs
from core import keys
from core import mailview
from core import recipients
from webapp.api.auth import owned_inbox
from webapp.api.errors import ApiError
from webapp.api.errors import Invalid
from webapp.api.outbound import iso
from webapp.api.pagination import paginate

FOLDERS = ("sent", "inbox")


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
    inbox = owned_inbox(address, keys.READ)
    folder = request.args.get("folder", "sent")
    if folder not in FOLDERS:
        raise Invalid("folder", f"must be one of {', '.join(FOLDERS)}")
    query = _query(inbox).where(models.Message.folder == folder)
    return jsonify(paginate(query, models.Message.id, message_json))


def _find(address, message_id):
    inbox = owned_inbox(address, keys.READ)
    row = _query(inbox).where(models.Message.id == message_id).first()
    if row is None:
        raise ApiError(404, "message_not_found", f"No message {message_id} in {inbox.address}")
    return row


def get_message(address, message_id):
    row = _find(address, message_id)
    with blobs.store().open(row.blob_key) as f:
        parsed = mailview.parse(f)
    data = message_json(row)
    data.update(mailview.content(parsed))
    data["raw_url"] = f"/v1/inboxes/{row.inbox.address}/messages/{row.id}.eml"
    data["refused_recipients"] = recipients.refused_for_message(row.id)
    return jsonify(data)


def raw_message(address, message_id):
    row = _find(address, message_id)
    stream = blobs.store().open(row.blob_key)
    return send_file(stream, mimetype="message/rfc822", as_attachment=True,
                     download_name=f"{row.id}.eml", max_age=0)
