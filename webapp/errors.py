"""Error pages: a readable page (or JSON under /v1 and /webhooks), never a traceback.

Registered app-wide by the factory (``register(app)``); blueprints with their own handlers
(the REST API's) still take precedence for errors raised in their views.
"""
import logging

from flask import jsonify
from flask import render_template
from flask import request
from flask_wtf.csrf import CSRFError
from markupsafe import escape
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import InternalServerError

import models
from core.errors import OUTAGES

log = logging.getLogger(__name__)

MESSAGES = {
    400: ("Bad request", "The request could not be understood. Go back and try again."),
    403: ("Forbidden", "You are not allowed to do that."),
    404: ("Not found", "There is nothing here, or it does not belong to your account."),
    405: ("Method not allowed", "That action is not available here."),
    413: ("Too large", "The request is larger than we accept."),
    429: ("Slow down", "Too many requests. Please wait a little and try again."),
    500: ("Something went wrong", "We could not complete that request. It has been logged; please try again."),
    503: ("Temporarily unavailable", "A service we depend on is unavailable right now. Please try again shortly."),
}
MACHINE_PREFIXES = ("/v1/", "/webhooks/")


FALLBACK_PAGE = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Inboxlayer</title>"
                 "<link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><main class=\"narrow\">"
                 "<section class=\"card error-page\"><p class=\"error-code\">{code}</p><h1>{title}</h1><p>{message}</p>"
                 "</section></main></body></html>")


def _respond(code, title, message):
    if request.path.startswith(MACHINE_PREFIXES) or request.path == "/v1":
        return jsonify(error={"code": title.lower().replace(" ", "_"), "message": message}), code
    try:
        # CSRF is checked before the request's DB connection opens, and the page needs current_user.
        with models.db.connection_context():
            return render_template("errors/error.html", code=code, title=title, message=message), code
    except Exception as exc:  # the database is what failed: answer without it
        log.warning("error page rendered without the database: %s: %s", type(exc).__name__, exc)
        return FALLBACK_PAGE.format(code=code, title=escape(title), message=escape(message)), code


def handle_csrf(exc):
    return _respond(400, "Form expired",
                    "This form was missing its security token or it expired. Go back, reload the page and submit again.")


def handle_http(exc):
    if exc.code is None or exc.code < 400:
        return exc
    title, default = MESSAGES.get(exc.code, (exc.name, exc.description))
    # Our own abort(…, description=…) texts are written for users; werkzeug's defaults are not.
    message = exc.description if exc.description and exc.description != type(exc).description else default
    return _respond(exc.code, title, message)


def handle_unexpected(exc):
    if isinstance(exc, HTTPException):
        return handle_http(exc)
    if isinstance(exc, OUTAGES):
        log.error("request failed, dependency unavailable: %s: %s", type(exc).__name__, exc)
        return _respond(503, *MESSAGES[503])
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _respond(500, *MESSAGES[500])


def register(app):
    """Install the app-wide error pages on ``app``."""
    app.register_error_handler(CSRFError, handle_csrf)
    app.register_error_handler(HTTPException, handle_http)
    app.register_error_handler(InternalServerError, handle_unexpected)
    app.register_error_handler(Exception, handle_unexpected)
