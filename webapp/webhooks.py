"""`POST /webhooks/ses`: SES events delivered by SNS (see core/ses_events.py)."""
import logging

from flask import Blueprint
from flask import jsonify
from flask import request
from peewee import PeeweeException
from werkzeug.exceptions import RequestEntityTooLarge

from core import ses_events

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

MAX_BODY = 1024 * 1024  # bytes; SNS messages are at most 256 KB


@bp.post("/ses")
def ses():
    # Unauthenticated: bound the read itself. A Content-Length over the limit is refused before
    # reading; a chunked body is read no further than one byte past the limit.
    body = None
    if (request.content_length or 0) <= MAX_BODY:
        request.max_content_length = MAX_BODY + 1
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            pass
    if body is None or len(body) > MAX_BODY:
        return jsonify(error="notification too large"), 413
    try:
        status, message = ses_events.handle(body)
    except PeeweeException as exc:
        # SNS retries on 5xx: the event is applied once the database is back.
        log.error("database unavailable for SNS notification: %s", exc)
        return jsonify(error="temporarily unavailable, retry later"), 503
    if status >= 400:
        return jsonify(error=message), status
    return jsonify(status=message), status
