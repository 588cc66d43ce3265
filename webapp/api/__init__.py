"""REST API v1: JSON in and out, Bearer tokens, errors as ``{"error": {"code", "message"}}``.

The route table below is the whole API; docs/api.md and openapi.py describe the same routes
(a test holds the three together).
"""
from flask import Blueprint
from flask import current_app
from flask import g
from flask import request
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound
from werkzeug.routing import RequestRedirect

from webapp.api import audit
from webapp.api import errors
from webapp.api import inboxes
from webapp.api import keys
from webapp.api import messages
from webapp.api import openapi
from webapp.api import outbound
from webapp.api import recipients
from webapp.api import sending
from webapp.api import smtp_settings
from webapp.api import webhooks
from core import keys as keys_rules
from webapp.api.auth import authenticate
from webapp.api.auth import require
from webapp.api.errors import error_response

__all__ = ["bp", "error_response"]

bp = Blueprint("api", __name__, url_prefix="/v1")

ROUTES = [
    # (rule, view, methods)
    ("/openapi.json", openapi.serve, ["GET"]),
    ("/account", inboxes.account, ["GET"]),
    ("/smtp", smtp_settings.show, ["GET"]),
    ("/inboxes", inboxes.list_inboxes, ["GET"]),
    ("/inboxes", inboxes.create_inbox, ["POST"]),
    ("/inboxes/<address>/send", sending.send, ["POST"]),
    ("/inboxes/<address>/messages", messages.list_messages, ["GET"]),
    ("/inboxes/<address>/messages/<int:message_id>", messages.get_message, ["GET"]),
    ("/inboxes/<address>/messages/<int:message_id>.eml", messages.raw_message, ["GET"]),
    ("/inboxes/<address>/policy", recipients.get_policy, ["GET"]),
    ("/inboxes/<address>/policy", recipients.put_policy, ["PUT"]),
    ("/inboxes/<address>/resume", recipients.resume, ["POST"]),
    ("/suppressions", recipients.list_suppressions, ["GET"]),
    ("/suppressions", recipients.add_suppression, ["POST"]),
    ("/suppressions/<address>", recipients.remove_suppression, ["DELETE"]),
    ("/outbound", outbound.list_outbound, ["GET"]),
    ("/outbound/<public_id>", outbound.get_outbound, ["GET"]),
    ("/webhooks", webhooks.list_webhooks, ["GET"]),
    ("/webhooks", webhooks.create_webhook, ["POST"]),
    ("/webhooks/<public_id>", webhooks.get_webhook, ["GET"]),
    ("/webhooks/<public_id>", webhooks.update_webhook, ["PATCH"]),
    ("/webhooks/<public_id>", webhooks.delete_webhook, ["DELETE"]),
    ("/webhooks/<public_id>/rotate-secret", webhooks.rotate_secret, ["POST"]),
    ("/webhooks/<public_id>/deliveries", webhooks.list_deliveries, ["GET"]),
    ("/webhooks/<public_id>/replay", webhooks.replay, ["POST"]),
    ("/webhooks/<public_id>/test", webhooks.send_test, ["POST"]),
    ("/events", webhooks.list_events, ["GET"]),
    ("/api-keys", keys.list_keys, ["GET"]),
    ("/api-keys", keys.create_key, ["POST"]),
    ("/api-keys/<int:key_id>", keys.revoke_key, ["DELETE"]),
    ("/audit", audit.list_audit, ["GET"]),
]
PUBLIC_ENDPOINTS = {"api.serve", "api.unknown_route"}
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

for rule, view, methods in ROUTES:
    bp.add_url_rule(rule, view_func=view, methods=methods)
errors.register(bp)


# The API key permission (core/keys.py) each webhook and event view needs: reading the endpoints,
# their deliveries and the feed is ``read``; creating, changing and replaying is ``manage``.
WEBHOOK_VIEWS = {webhooks.list_webhooks, webhooks.get_webhook, webhooks.list_deliveries, webhooks.list_events}


@bp.before_request
def require_token():
    if request.endpoint not in PUBLIC_ENDPOINTS:
        authenticate()
        view = current_app.view_functions.get(request.endpoint)
        if getattr(view, "__module__", None) == webhooks.__name__:
            require(keys_rules.READ if view in WEBHOOK_VIEWS else keys_rules.MANAGE)
            if g.token.inbox_ids and view is not webhooks.list_events:
                keys_rules.check_account_wide(g.token, "webhooks")  # an endpoint may cover every inbox


@bp.route("/", defaults={"rest": ""}, methods=ANY_METHOD)
@bp.route("/<path:rest>", methods=ANY_METHOD)
def unknown_route(rest):
    """Anything under /v1 that no route took: a JSON 404 (or 405 naming the methods that exist).

    Routing errors happen before a blueprint is chosen, so the blueprint's own error handlers
    would never see them; this catch-all keeps /v1 JSON-only without touching the app's handlers.
    """
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = set()
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        try:
            endpoint, _ = adapter.match(request.path, method=method)
        except (NotFound, MethodNotAllowed, RequestRedirect):
            continue
        if endpoint != "api.unknown_route":
            allowed.add(method)
    if allowed:
        if "GET" in allowed:
            allowed.add("HEAD")
        raise MethodNotAllowed(valid_methods=sorted(allowed | {"OPTIONS"}))
    raise NotFound(f"No API route {request.method} {request.path}; see /v1/openapi.json")
