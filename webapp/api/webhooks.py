"""/v1/webhooks (endpoints, their delivery log, replay, test event) and GET /v1/events (the feed)."""
import datetime

from flask import g
from flask import jsonify
from flask import request

import models
from core import event_vocabulary
from core import events
from core import keys
from core import webhooks
from core.errors import KeyRefused
from webapp.api.auth import owned_inbox
from webapp.api.errors import ApiError
from webapp.api.errors import Invalid
from webapp.api.pagination import decode_cursor
from webapp.api.pagination import encode_cursor
from webapp.api.pagination import limit_arg
from webapp.api.validation import json_body
from webapp.views import app_settings

CREATE_FIELDS = {"url", "events", "inbox", "enabled"}
UPDATE_FIELDS = CREATE_FIELDS
MAX_BODY = 16 * 1024  # bytes of a webhook request body
MAX_TYPES_ARG = 20  # event types in one ?type= filter


def _reject_unknown(body, allowed):
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(unknown[0], f"unknown field; allowed: {', '.join(sorted(allowed))}")


def _inbox_arg(value):
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid("inbox", "must be an inbox address or null")
    try:
        return owned_inbox(value)
    except ApiError:
        raise Invalid("inbox", f"no inbox {value!r} in this account") from None


def _render(endpoint, secret=None):
    inbox = models.Inbox.get_or_none(models.Inbox.id == endpoint.inbox_id) if endpoint.inbox_id else None
    return webhooks.endpoint_json(endpoint, inbox.address if inbox else None, secret)


def _find(public_id):
    endpoint = webhooks.owned_endpoint(g.user, public_id)
    if endpoint is None:
        raise ApiError(404, "webhook_not_found", f"No webhook endpoint {public_id!r} in this account")
    return endpoint


def _fields(body):
    types = body.get("events")
    if types is not None and (not isinstance(types, list) or len(types) > len(event_vocabulary.EVENT_TYPES)):
        raise Invalid("events", "must be a list of event types")
    enabled = body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise Invalid("enabled", "must be true or false")
    url = body.get("url")
    if url is not None and not isinstance(url, str):
        raise Invalid("url", "must be a string")
    return url, types, enabled


def list_webhooks():
    w = models.WebhookEndpoint
    rows = list(w.select().where(w.user == g.user).order_by(w.id))
    return jsonify({"data": [_render(r) for r in rows], "has_more": False, "next_cursor": None})


def create_webhook():
    body = json_body(MAX_BODY)
    _reject_unknown(body, CREATE_FIELDS)
    url, types, enabled = _fields(body)
    if url is None:
        raise Invalid("url", "is required")
    inbox = _inbox_arg(body.get("inbox"))
    try:
        endpoint, secret = webhooks.create_endpoint(g.user, url, types, inbox,
                                                    True if enabled is None else enabled, app_settings())
    except webhooks.WebhookError as exc:
        raise Invalid(exc.field, str(exc)) from None
    return jsonify(_render(endpoint, secret)), 201


def get_webhook(public_id):
    return jsonify(_render(_find(public_id)))


def update_webhook(public_id):
    endpoint = _find(public_id)
    body = json_body(MAX_BODY)
    _reject_unknown(body, UPDATE_FIELDS)
    url, types, enabled = _fields(body)
    inbox = _inbox_arg(body["inbox"]) if "inbox" in body else ...
    try:
        endpoint = webhooks.update_endpoint(endpoint, url, types, inbox, enabled, app_settings())
    except webhooks.WebhookError as exc:
        raise Invalid(exc.field, str(exc)) from None
    return jsonify(_render(endpoint))


def delete_webhook(public_id):
    webhooks.delete_endpoint(_find(public_id))
    return "", 204


def rotate_secret(public_id):
    endpoint = _find(public_id)
    secret = webhooks.rotate_secret(endpoint)
    return jsonify(_render(models.WebhookEndpoint.get_by_id(endpoint.id), secret))


def list_deliveries(public_id):
    endpoint = _find(public_id)
    limit = limit_arg()
    cursor = request.args.get("cursor")
    rows, has_more = webhooks.deliveries(endpoint, decode_cursor(cursor) if cursor else None, limit)
    return jsonify({"data": [webhooks.delivery_json(row, log) for row, log in rows], "has_more": has_more,
                    "next_cursor": encode_cursor(rows[-1][0].id) if has_more else None})


def _since(value):
    if not isinstance(value, str) or len(value) > 40:
        raise Invalid("since", "must be an ISO 8601 time, e.g. 2026-11-29T10:00:00Z")
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid("since", "must be an ISO 8601 time, e.g. 2026-11-29T10:00:00Z") from None
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return when


def replay(public_id):
    """``{"event": "evt_..."}`` re-delivers one event; ``{"since": time}`` every event since then."""
    endpoint = _find(public_id)
    body = json_body(MAX_BODY)
    _reject_unknown(body, {"event", "since"})
    if ("event" in body) == ("since" in body):
        raise Invalid("event", "give exactly one of event or since")
    if "event" in body:
        if not isinstance(body["event"], str) or not webhooks.replay_event(endpoint, body["event"]):
            raise ApiError(404, "event_not_found", f"No event {body['event']!r} in this account")
        return jsonify({"replayed": 1}), 202
    return jsonify({"replayed": webhooks.replay_since(endpoint, _since(body["since"]))}), 202


def send_test(public_id):
    endpoint = _find(public_id)
    if not endpoint.enabled:
        raise ApiError(409, "webhook_disabled", "Enable the endpoint before sending it a test event")
    return jsonify({"event": webhooks.send_test_event(endpoint)}), 202


def list_events():
    """The feed: events after ``after`` (a cursor this endpoint returned; omit for the oldest
    retained), oldest first, ``type`` (comma-separated) and ``inbox`` filters."""
    after = request.args.get("after")
    after_id = decode_cursor(after) if after else 0
    types = request.args.get("type")
    wanted = ()
    if types is not None:
        wanted = tuple(t for t in types.split(",") if t)
        unknown = [t for t in wanted if t not in event_vocabulary.EVENT_TYPES]
        if not wanted or len(wanted) > MAX_TYPES_ARG or unknown:
            raise Invalid("type", f"must be event types separated by commas: {', '.join(event_vocabulary.EVENT_TYPES)}")
    inbox = request.args.get("inbox")
    inbox_row = _inbox_arg(inbox) if inbox is not None else None
    if g.token.inbox_ids and (inbox_row is None or not keys.may_see(g.token, inbox_row)):
        # A key scoped to some inboxes reads the feed of one of them (?inbox=), never the account's.
        raise KeyRefused("inbox_scope", "inbox outside the API key's scope (a scoped key must name one of "
                                        "its inboxes: ?inbox=)")
    inbox_id = inbox_row.id if inbox_row is not None else None
    limit = limit_arg()
    page = events.feed(g.user.id, after_id, wanted, inbox_id, limit)
    # The cursor moves to the last event returned; with none, it stays where the caller was.
    cursor = encode_cursor(page[-1][0]) if page else (after or encode_cursor(0))
    return jsonify({"data": [envelope for _, envelope in page], "next_cursor": cursor,
                    "has_more": len(page) == limit})
