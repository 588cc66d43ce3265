"""JSON errors for the REST API: every failure is ``{"error": {"code", "message"}}``."""
import logging

from flask import jsonify
from werkzeug.exceptions import HTTPException

from core.errors import OUTAGES
from core.errors import SubmitError
from core.mail import Invalid as InvalidField

log = logging.getLogger(__name__)


# Werkzeug's exception names are fine for humans; clients key on these stable codes.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "temporary_failure",
}


class ApiError(Exception):
    """A refusal a view raises; rendered by ``error_response``."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class Invalid(ApiError):
    """422 naming the offending field (``code`` when clients need to tell this refusal apart)."""

    def __init__(self, field, message, code="invalid_request"):
        super().__init__(422, code, f"{field}: {message}")
        self.field = field


def error_response(status, code, message, headers=None):
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = str(value)
    return response


def handle_api_error(exc):
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def handle_invalid_field(exc):
    """A send/inbox request field refused by core.mail's rules: 422 naming the field."""
    return error_response(422, exc.code, exc.message)


def handle_submit_error(exc):
    headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
    if exc.http_status == 429 and "Retry-After" not in headers:
        headers["Retry-After"] = 1
    return error_response(exc.http_status, exc.code, str(exc), headers)


def handle_http_exception(exc):
    status = exc.code or 500
    headers = {}
    if status == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(exc.valid_methods)
    if status == 413:
        message = "Request body too large"
    else:
        message = exc.description or exc.name
    return error_response(status, HTTP_CODES.get(status, exc.name.lower().replace(" ", "_")), message, headers)


def handle_unexpected(exc):
    # The one logged boundary for the API: a message for the client, the traceback for us.
    if isinstance(exc, HTTPException):
        return handle_http_exception(exc)
    if isinstance(exc, OUTAGES):
        log.error("API request failed, dependency unavailable: %s: %s", type(exc).__name__, exc)
        return error_response(503, "temporary_failure", "Temporary server error, try again later",
                              {"Retry-After": 5})
    log.exception("unhandled error in API request")
    return error_response(500, "internal_error", "Internal server error; the request was not completed")


def register(bp):
    bp.register_error_handler(ApiError, handle_api_error)
    bp.register_error_handler(InvalidField, handle_invalid_field)
    bp.register_error_handler(SubmitError, handle_submit_error)
    bp.register_error_handler(HTTPException, handle_http_exception)
    bp.register_error_handler(Exception, handle_unexpected)
