"""Outbound: every relayed message with filters (inbox, status, date), and one message's event timeline."""
import datetime
import json

from flask import Blueprint
from flask import abort
from flask import render_template
from flask import request
from flask_login import current_user
from flask_login import login_required
from peewee import JOIN

import models
from core import ids
from core import recipients as recipient_rules
from core.outbound import STATUSES
from webapp.views import paginate

bp = Blueprint("outbound", __name__, url_prefix="/outbound")

PAGE_SIZE = 50  # rows per page
# Query keys the pager carries on. Only these reach url_for: others such as _method or _external
# are url_for's own arguments (``?_method=DELETE`` was a 500).
FILTER_KEYS = ("inbox", "status", "since", "until")


def _parse_filters(args, inboxes):
    """(filters, errors): the valid filters from the query string and a message per invalid one."""
    filters, errors = {}, []
    inbox_id = args.get("inbox", "").strip()
    if inbox_id:
        if inbox_id.isdigit() and int(inbox_id) in inboxes:
            filters["inbox"] = int(inbox_id)
        else:
            errors.append("Unknown inbox.")
    status = args.get("status", "").strip()
    if status:
        if status in STATUSES:
            filters["status"] = status
        else:
            errors.append(f"Status must be one of: {', '.join(STATUSES)}.")
    for key, label in (("since", "From date"), ("until", "To date")):
        value = args.get(key, "").strip()
        if value:
            try:
                filters[key] = datetime.date.fromisoformat(value)
            except ValueError:
                errors.append(f"{label} must be a date like 2026-01-31.")
    return filters, errors


@bp.get("/")
@login_required
def index():
    user = current_user.user
    inboxes = {i.id: i for i in models.Inbox.select().where(models.Inbox.user == user).order_by(models.Inbox.address)}
    filters, errors = _parse_filters(request.args, inboxes)
    # The Sent copy comes along (one query, not one per row) for the subject column.
    query = (models.OutboundEmail.select(models.OutboundEmail, models.Message)
             .join(models.Message, JOIN.LEFT_OUTER).where(models.OutboundEmail.user == user))
    if "inbox" in filters:
        query = query.where(models.OutboundEmail.inbox == filters["inbox"])
    if "status" in filters:
        query = query.where(models.OutboundEmail.status == filters["status"])
    if "since" in filters:
        query = query.where(models.OutboundEmail.created_at >= datetime.datetime.combine(filters["since"], datetime.time()))
    if "until" in filters:
        end = datetime.datetime.combine(filters["until"] + datetime.timedelta(days=1), datetime.time())
        query = query.where(models.OutboundEmail.created_at < end)
    query = query.order_by(models.OutboundEmail.created_at.desc(), models.OutboundEmail.id.desc())
    rows, page, pages, total = paginate(query, PAGE_SIZE)
    return render_template("outbound/index.html", rows=rows, inboxes=inboxes, filters=filters, errors=errors,
                           statuses=STATUSES, page=page, pages=pages, total=total,
                           args={k: v for k, v in request.args.items() if k in FILTER_KEYS}), 422 if errors else 200


HIDDEN_DETAIL_KEYS = {"sns_message_id", "feedbackId", "timestamp", "arrivalDate", "userAgent"}
MAX_DETAIL_ROWS = 20  # a complaint or bounce for 100 recipients must not become a page of its own


def event_detail(event):
    """The event's detail as (label, text) rows for the timeline. SES events nest what users need
    (bounce type, each recipient's diagnostic) a level or two down, so nested values are flattened
    under their own key names."""
    try:
        detail = json.loads(event.detail or "{}")
    except ValueError:
        return [("detail", event.detail)]
    rows = []

    def walk(label, value):
        if label in HIDDEN_DETAIL_KEYS:
            return
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(key, inner)
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            for inner in value:
                walk(label, inner)
        elif value not in (None, "", [], {}):
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            rows.append((label, text))

    walk("detail", detail)
    return rows[:MAX_DETAIL_ROWS]


@bp.get("/<public_id>")
@login_required
def show(public_id):
    if not ids.is_public_id(public_id):
        abort(404)
    outbound = (models.OutboundEmail.select(models.OutboundEmail, models.Message)
                .join(models.Message, JOIN.LEFT_OUTER)
                .where(models.OutboundEmail.public_id == public_id, models.OutboundEmail.user == current_user.user)
                .get_or_none())
    if outbound is None:
        abort(404)
    events = list(models.OutboundEvent.select().where(models.OutboundEvent.outbound == outbound)
                  .order_by(models.OutboundEvent.occurred_at, models.OutboundEvent.id))
    try:
        recipients = json.loads(outbound.recipients)
    except ValueError:
        recipients = []
    return render_template("outbound/show.html", outbound=outbound, events=events, recipients=recipients,
                           refused=recipient_rules.refused_at_rcpt(events), event_detail=event_detail)
