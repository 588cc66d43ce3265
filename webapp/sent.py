"""Sent folder per inbox: list (paged), view one message, its HTML (sandboxed), the .eml."""
import logging

from flask import Blueprint
from flask import abort
from flask import make_response
from flask import render_template
from flask import send_file
from flask_login import login_required

import models
from webapp.forms import MAX_ID
from core import blobs
from core import mailview
from core import recipients as recipient_rules
from webapp.inboxes import owned_inbox
from webapp.views import get_or_404
from webapp.views import paginate

bp = Blueprint("sent", __name__, url_prefix=f"/inboxes/<int(max={MAX_ID}):inbox_id>/sent")
log = logging.getLogger(__name__)

PAGE_SIZE = 25  # messages per page
# The HTML part runs in an opaque origin with no scripts, forms, plugins or network. Real mail is
# styled inline (style attributes, <style>), so inline CSS is allowed; what CSS could fetch stays
# blocked (no remote stylesheets, @import, fonts or url() images: only data: images and fonts).
HTML_PART_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
                 "frame-ancestors 'self'")


def _owned_message(inbox, message_id):
    return get_or_404(models.Message, models.Message.id == message_id, models.Message.inbox == inbox,
                      models.Message.folder == "sent")


def _open_blob(message):
    try:
        return blobs.store().open(message.blob_key)
    except blobs.BlobError as exc:
        log.error("blob of message %s unavailable: %s", message.id, exc)
        abort(503, description="The stored copy of this message is unavailable right now. Please try again later.")


@bp.get("/")
@login_required
def index(inbox_id):
    inbox = owned_inbox(inbox_id)
    query = (models.Message.select().where(models.Message.inbox == inbox, models.Message.folder == "sent")
             .order_by(models.Message.created_at.desc(), models.Message.id.desc()))
    messages, page, pages, total = paginate(query, PAGE_SIZE)
    outbound = {o.message_id: o for o in models.OutboundEmail.select()
                .where(models.OutboundEmail.message.in_([m.id for m in messages]))} if messages else {}
    return render_template("sent/index.html", inbox=inbox, messages=messages, outbound=outbound, page=page,
                           pages=pages, total=total)


@bp.get(f"/<int(max={MAX_ID}):message_id>")
@login_required
def show(inbox_id, message_id):
    inbox = owned_inbox(inbox_id)
    message = _owned_message(inbox, message_id)
    with _open_blob(message) as f:
        parsed = mailview.parse(f)
    outbound = models.OutboundEmail.get_or_none(models.OutboundEmail.message == message)
    return render_template("sent/show.html", inbox=inbox, message=message, outbound=outbound,
                           refused=recipient_rules.refused_for_message(message.id),
                           headers=mailview.headers(parsed), text=mailview.text_body(parsed),
                           has_html=mailview.html_body(parsed) is not None,
                           attachments=mailview.attachments(parsed))


@bp.get(f"/<int(max={MAX_ID}):message_id>/html")
@login_required
def html(inbox_id, message_id):
    inbox = owned_inbox(inbox_id)
    message = _owned_message(inbox, message_id)
    with _open_blob(message) as f:
        body = mailview.html_body(mailview.parse(f))
    if body is None:
        abort(404)
    response = make_response(body)
    response.headers["Content-Type"] = "text/html; charset=utf-8"
    response.headers["Content-Security-Policy"] = HTML_PART_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get(f"/<int(max={MAX_ID}):message_id>.eml")
@login_required
def download(inbox_id, message_id):
    inbox = owned_inbox(inbox_id)
    message = _owned_message(inbox, message_id)
    outbound = models.OutboundEmail.get_or_none(models.OutboundEmail.message == message)
    name = f"{outbound.public_id if outbound else f'message-{message.id}'}.eml"
    return send_file(_open_blob(message), mimetype="message/rfc822", as_attachment=True, download_name=name,
                     max_age=0)
