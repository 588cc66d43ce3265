"""The OpenAPI 3 document of /v1, served at /v1/openapi.json.

Hand-written from small schema dicts; tests/test_api_openapi.py checks that it lists exactly
the blueprint's routes and schemathesis checks every response against it.
"""
from flask import jsonify

from core import event_vocabulary
from core import ids
from core import outbound
from core.keys import PERMISSIONS

OPENAPI_VERSION = "3.0.3"


def _nullable(schema):
    return {**schema, "nullable": True}


STRING = {"type": "string"}
DATETIME = {"type": "string", "format": "date-time"}
ADDRESS_OR_LIST = {
    "oneOf": [{"type": "string", "maxLength": 360},
              {"type": "array", "items": {"type": "string", "maxLength": 360}, "maxItems": 100}],
    "description": "An address (`bob@example.com` or `Bob <bob@example.com>`) or a list of them.",
}

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {"code": {"type": "string", "description": "Stable machine-readable code."},
                           "message": {"type": "string", "description": "What went wrong, for humans."}}}},
    },
    "Event": {
        "type": "object", "required": ["type", "detail", "occurred_at"],
        "properties": {"type": STRING, "detail": {"type": "object"}, "occurred_at": DATETIME},
    },
    "Outbound": {
        "type": "object",
        "required": ["id", "status", "via", "inbox", "mail_from", "recipients", "attempts", "created_at"],
        "properties": {
            "id": {"type": "string", "pattern": f"^{ids.PATTERN}$"},
            "status": {"type": "string", "enum": list(outbound.STATUSES)},
            "via": {"type": "string", "enum": ["smtp", "api"]},
            "inbox": STRING,
            "mail_from": STRING,
            "recipients": {"type": "array", "items": STRING},
            "subject": _nullable(STRING),
            "message_id": _nullable({"type": "string", "description": "The Message-ID header."}),
            "sent_message_id": _nullable({"type": "integer", "description": "Id of the Sent-folder copy."}),
            "ses_message_id": _nullable(STRING),
            "attempts": {"type": "integer", "minimum": 0},
            "last_error": _nullable(STRING),
            "created_at": DATETIME,
            "updated_at": _nullable(DATETIME),
            "sent_at": _nullable(DATETIME),
            "completed_at": _nullable(DATETIME),
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"},
                       "description": "Status history, oldest first (only on GET /v1/outbound/{id})."},
            "refused_recipients": {
                "type": "array", "description": "Recipients refused at SMTP RCPT (suppressed, not allowed, "
                                                "new-recipient limit) with the reply; only on GET /v1/outbound/{id}.",
                "items": {"type": "object", "properties": {"address": STRING, "reason": _nullable(STRING)}}},
        },
    },
    "Inbox": {
        "type": "object", "required": ["address", "display_name", "domain", "can_send", "created_at"],
        "properties": {"address": STRING, "display_name": STRING, "domain": _nullable(STRING),
                       "can_send": {"type": "boolean"}, "cannot_send_reason": _nullable(STRING),
                       "created_at": DATETIME},
    },
    "InboxCreate": {
        "type": "object", "required": ["name"], "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64, "example": "support-bot",
                     "description": "Local part: letters, digits, '.', '-', '_'."},
            "domain": {"type": "string", "maxLength": 253,
                       "description": "One of your domains; omit for the default domain."},
            "display_name": {"type": "string", "maxLength": 100},
        },
    },
    "Attachment": {
        "type": "object", "required": ["filename", "content"], "additionalProperties": False,
        "properties": {
            "filename": {"type": "string", "minLength": 1, "maxLength": 255},
            "content": {"type": "string", "format": "byte", "description": "Standard base64."},
            "content_type": {"type": "string", "example": "application/pdf",
                             "description": "Default: guessed from the file name."},
            "disposition": {"type": "string", "enum": ["attachment", "inline"], "default": "attachment"},
        },
    },
    "SendRequest": {
        "type": "object", "additionalProperties": False,
        "description": "At least one recipient (to, cc or bcc) and text and/or html are required; at most 100 "
                       "recipients across to, cc and bcc, of which at most 49 in to and cc (SES counts those "
                       "with every batch of recipients).",
        "properties": {
            "to": ADDRESS_OR_LIST, "cc": ADDRESS_OR_LIST, "bcc": ADDRESS_OR_LIST, "reply_to": ADDRESS_OR_LIST,
            "subject": {"type": "string", "maxLength": 998},
            "text": {"type": "string"},
            "html": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 998},
                        "description": "Extra headers (X-*, In-Reply-To, References, List-Unsubscribe, ...). "
                                       "Structural headers (From, To, Subject, Content-*, ...) are refused."},
            "attachments": {"type": "array", "maxItems": 100, "items": {"$ref": "#/components/schemas/Attachment"}},
        },
        "example": {"to": ["bob@example.com"], "subject": "Hello", "text": "Hi Bob"},
    },
    "Account": {
        "type": "object", "required": ["email", "plan", "quota", "rate"],
        "properties": {
            "email": STRING, "plan": STRING,
            "quota": {"type": "object", "required": ["limit", "used", "remaining", "resets_at"],
                      "properties": {"limit": {"type": "integer"}, "used": {"type": "integer"},
                                     "remaining": {"type": "integer"}, "resets_at": DATETIME}},
            "rate": {"type": "object", "properties": {"per_second": {"type": "number"},
                                                      "burst": {"type": "integer"}}},
            "token": {"$ref": "#/components/schemas/ApiKey"},
        },
    },
    "ApiKey": {
        "type": "object",
        "required": ["id", "name", "prefix", "inboxes", "permissions", "expires_at", "daily_limit", "sandbox",
                     "created_at"],
        "properties": {
            "id": {"type": "integer"}, "name": STRING,
            "prefix": {"type": "string", "description": "The first 12 characters of the key, shown in lists."},
            "inboxes": _nullable({"type": "array", "items": STRING,
                                  "description": "Inbox addresses the key may use; null = every inbox."}),
            "permissions": {"type": "array", "items": {"type": "string", "enum": list(PERMISSIONS)}},
            "expires_at": _nullable(DATETIME),
            "daily_limit": _nullable({"type": "integer", "description": "Sends per UTC day for this key, under "
                                                                        "the account quota."}),
            "sandbox": {"type": "boolean", "description": "Messages are accepted and stored (status "
                                                          "`sandboxed`), never relayed nor charged."},
            "created_at": DATETIME, "last_used_at": _nullable(DATETIME), "last_used_ip": _nullable(STRING),
            "last_used_via": _nullable({"type": "string", "enum": ["smtp", "api"]}),
            "revoked_at": _nullable(DATETIME),
            "token": {"type": "string", "description": "The full key: only in the answer that creates it."},
        },
    },
    "ApiKeyCreate": {
        "type": "object", "required": ["name"], "additionalProperties": False,
        "description": "A key never gets more than the key that creates it (403 key_scope).",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "inboxes": {"type": "array", "items": {"type": "string", "maxLength": 320}, "minItems": 1,
                        "maxItems": 100, "description": "Omit for every inbox of the account."},
            "permissions": {"type": "array", "items": {"type": "string", "enum": list(PERMISSIONS)},
                            "minItems": 1, "description": "Default: send and read."},
            "expires_at": {"type": "string", "format": "date-time"},
            "daily_limit": {"type": "integer", "minimum": 1, "maximum": 10000000},
            "sandbox": {"type": "boolean", "default": False},
        },
        "example": {"name": "support-agent", "inboxes": ["agent@inboxlayer.dev"], "permissions": ["send"],
                    "daily_limit": 50},
    },
    "AuditEvent": {
        "type": "object",
        "required": ["id", "occurred_at", "action", "outcome", "reason", "key_prefix", "protocol", "client_ip"],
        "properties": {
            "id": {"type": "integer"}, "occurred_at": DATETIME,
            "action": {"type": "string", "enum": ["auth", "send"]},
            "outcome": {"type": "string", "enum": ["success", "failure", "accepted", "refused"]},
            "reason": _nullable({"type": "string", "description": "A refusal's code (key_scope, credentials, "
                                                                  "quota_exceeded, ...), or `replayed`."}),
            "key_prefix": STRING, "protocol": {"type": "string", "enum": ["smtp", "api"]}, "client_ip": STRING,
            "detail": STRING,
        },
    },
    "SmtpSettings": {
        "type": "object",
        "required": ["host", "starttls_port", "tls_port", "auth_mechanisms", "username", "max_message_size",
                     "max_recipients", "certificate"],
        "properties": {
            "host": {"type": "string", "example": "smtp.inboxlayer.dev", "description": "Server name to dial."},
            "starttls_port": _nullable({"type": "integer", "example": 587,
                                        "description": "Submission with STARTTLS (recommended); null = off."}),
            "tls_port": _nullable({"type": "integer", "example": 465,
                                   "description": "Submission with implicit TLS; null = off."}),
            "auth_mechanisms": {"type": "array", "items": STRING},
            "username": {"type": "string", "description": "What to log in with (the inbox address); the "
                                                          "password is an API token."},
            "max_message_size": {"type": "integer", "description": "Bytes (SIZE in EHLO)."},
            "max_recipients": {"type": "integer"},
            "certificate": _nullable({"type": "string", "description": "PEM of the server's self-signed "
                                      "development certificate, to trust for this server only; null when "
                                      "the server has a CA-issued certificate."}),
        },
    },
    "Message": {
        "type": "object", "required": ["id", "folder", "message_id", "subject", "from", "to", "size", "created_at"],
        "properties": {"id": {"type": "integer"}, "folder": {"type": "string", "enum": ["sent", "inbox"]},
                       "message_id": STRING, "subject": STRING, "from": STRING, "to": STRING,
                       "size": {"type": "integer"}, "created_at": DATETIME, "outbound_id": _nullable(STRING)},
    },
    "MessageDetail": {
        "allOf": [{"$ref": "#/components/schemas/Message"}, {
            "type": "object", "required": ["headers", "attachments", "raw_url"],
            "properties": {
                "headers": {"type": "array", "items": {"type": "object", "required": ["name", "value"],
                                                       "properties": {"name": STRING, "value": STRING}}},
                "text": _nullable(STRING), "html": _nullable(STRING),
                "attachments": {"type": "array", "items": {
                    "type": "object", "properties": {"filename": _nullable(STRING), "content_type": STRING,
                                                     "size": {"type": "integer"}}}},
                "raw_url": STRING,
                "refused_recipients": {
                    "type": "array", "description": "Recipients of the envelope refused at SMTP RCPT (the "
                                                    "message went to the others), with the reply.",
                    "items": {"type": "object", "properties": {"address": STRING, "reason": _nullable(STRING)}}},
            }}],
    },
}


def _list_of(ref):
    return {"type": "object", "required": ["data", "has_more", "next_cursor"],
            "properties": {"data": {"type": "array", "items": {"$ref": f"#/components/schemas/{ref}"}},
                           "has_more": {"type": "boolean"}, "next_cursor": _nullable(STRING)}}


SCHEMAS["Suppression"] = {
    "type": "object", "required": ["address", "source", "reason", "created_at"],
    "properties": {"address": STRING, "source": {"type": "string", "enum": ["bounce", "complaint", "manual"]},
                   "reason": STRING, "created_at": DATETIME},
}
SCHEMAS["SuppressionCreate"] = {
    "type": "object", "additionalProperties": False,
    "description": "Either `address` or `addresses` (at most 1000). An address already listed keeps its reason.",
    "properties": {"address": {"type": "string", "maxLength": 320, "example": "bob@example.com"},
                   "addresses": {"type": "array", "items": {"type": "string", "maxLength": 320}, "maxItems": 1000},
                   "reason": {"type": "string", "maxLength": 500}},
}
SCHEMAS["Policy"] = {
    "type": "object",
    "required": ["allow", "block", "new_recipients_per_day", "effective_new_recipients_per_day",
                 "new_recipients_today", "paused", "paused_reason", "paused_at"],
    "properties": {
        "allow": {"type": "array", "items": STRING, "description": "With entries, only these recipients."},
        "block": {"type": "array", "items": STRING, "description": "Never these recipients (wins over allow)."},
        "new_recipients_per_day": _nullable({"type": "integer", "description": "This inbox's own cap; null = "
                                                                                "the plan's."}),
        "effective_new_recipients_per_day": {"type": "integer", "description": "The cap in force; 0 = none."},
        "new_recipients_today": {"type": "integer"},
        "paused": {"type": "boolean"}, "paused_reason": _nullable(STRING), "paused_at": _nullable(DATETIME)},
}
SCHEMAS["PolicyUpdate"] = {
    "type": "object", "additionalProperties": False,
    "description": "Replaces both lists (an omitted list becomes empty). Entries: `bob@x.com`, `@x.com` "
                   "(that domain) or `*.x.com` (its subdomains); at most 1000 per list.",
    "properties": {
        "allow": {"type": "array", "items": {"type": "string", "maxLength": 320}, "maxItems": 1000},
        "block": {"type": "array", "items": {"type": "string", "maxLength": 320}, "maxItems": 1000},
        "new_recipients_per_day": _nullable({"type": "integer", "minimum": 0, "maximum": 1000000}),
    },
    "example": {"allow": ["@partner.com"], "block": ["ceo@partner.com"]},
}
SCHEMAS["SuppressionList"] = _list_of("Suppression")
EVENT_TYPE = {"type": "string", "enum": list(event_vocabulary.EVENT_TYPES)}
SCHEMAS.update({
    "PublicEvent": {
        "type": "object", "required": ["id", "type", "timestamp", "account", "inbox", "outbound", "data"],
        "description": "One event, as webhooks receive it (signed per Standard Webhooks; `webhook-id` is "
                       "`id`) and the feed lists it. `data` of an `outbound.*` event is the Outbound resource "
                       "as it was then (plus `bounce`, `complaint`, `delay` or `delivery` from SES).",
        "properties": {"id": {"type": "string", "pattern": f"^{ids.EVENT_PATTERN}$"},
                       "type": STRING, "timestamp": DATETIME, "account": STRING,
                       "inbox": _nullable(STRING), "outbound": _nullable(STRING), "data": {"type": "object"}},
    },
    "EventFeed": {
        "type": "object", "required": ["data", "has_more", "next_cursor"],
        "properties": {"data": {"type": "array", "items": {"$ref": "#/components/schemas/PublicEvent"}},
                       "has_more": {"type": "boolean"},
                       "next_cursor": {"type": "string", "description": "Pass as `after` to read on."}},
    },
    "Webhook": {
        "type": "object", "required": ["id", "url", "events", "inbox", "enabled", "created_at"],
        "properties": {
            "id": {"type": "string", "pattern": f"^{ids.WEBHOOK_PATTERN}$"},
            "url": STRING,
            "events": {"type": "array", "items": EVENT_TYPE, "description": "Empty: every event type."},
            "inbox": _nullable({"type": "string", "description": "Only events of this inbox."}),
            "enabled": {"type": "boolean"},
            "disabled_reason": _nullable(STRING),
            "secret": {"type": "string", "description": "Signing secret (`whsec_...`); only in the answers "
                                                        "to create and rotate-secret."},
            "created_at": DATETIME, "updated_at": _nullable(DATETIME),
        },
    },
    "WebhookCreate": {
        "type": "object", "required": ["url"], "additionalProperties": False,
        "properties": {"url": {"type": "string", "maxLength": 2048, "example": "https://example.com/hooks"},
                       "events": {"type": "array", "items": EVENT_TYPE, "maxItems": 20},
                       "inbox": _nullable(STRING), "enabled": {"type": "boolean"}},
    },
    "WebhookUpdate": {
        "type": "object", "additionalProperties": False,
        "properties": {"url": {"type": "string", "maxLength": 2048},
                       "events": {"type": "array", "items": EVENT_TYPE, "maxItems": 20},
                       "inbox": _nullable(STRING), "enabled": {"type": "boolean"}},
    },
    "WebhookReplay": {
        "type": "object", "additionalProperties": False,
        "description": "Exactly one of `event` (one event again) or `since` (every event since then).",
        "properties": {"event": STRING, "since": DATETIME},
    },
    "Delivery": {
        "type": "object", "required": ["id", "event", "type", "status", "attempts", "log"],
        "properties": {
            "id": {"type": "integer"}, "event": STRING, "type": STRING,
            "status": {"type": "string", "enum": list(event_vocabulary.DELIVERY_STATUSES)},
            "attempts": {"type": "integer"}, "last_status_code": _nullable({"type": "integer"}),
            "last_error": _nullable(STRING), "next_attempt_at": _nullable(DATETIME), "created_at": DATETIME,
            "completed_at": _nullable(DATETIME),
            "log": {"type": "array", "items": {"type": "object", "properties": {
                "attempt": {"type": "integer"}, "status_code": _nullable({"type": "integer"}),
                "latency_ms": _nullable({"type": "integer"}), "response": STRING, "error": _nullable(STRING),
                "at": DATETIME}}},
        },
    },
})
SCHEMAS["OutboundList"] = _list_of("Outbound")
SCHEMAS["WebhookList"] = _list_of("Webhook")
SCHEMAS["DeliveryList"] = _list_of("Delivery")
SCHEMAS["InboxList"] = _list_of("Inbox")
SCHEMAS["MessageList"] = _list_of("Message")
SCHEMAS["ApiKeyList"] = _list_of("ApiKey")
SCHEMAS["AuditList"] = _list_of("AuditEvent")

ERROR_TEXT = {
    400: "Malformed request (body not JSON, bad Idempotency-Key).",
    401: "Missing, invalid, revoked or expired token (`key_expired`).",
    403: "Not allowed: the API key's scope or permissions do not cover it (`key_scope`), the inbox may not send "
         "(custom domain not verified; `inbox_paused`), or the plan's inbox limit is reached.",
    404: "No such resource in this account.",
    405: "Method not allowed on this path.",
    409: "Conflict (Idempotency-Key reused with another body; address taken).",
    413: "Request body or message over the size limit: 25 MB as sent, after base64 encoding of attachments.",
    422: "Invalid field (the message names it), or a recipient refused: `recipient_suppressed`, "
         "`recipient_not_allowed` (the message names each).",
    429: "Rate limit, daily quota, new-recipient limit (`new_recipient_limit`) or the API key's own daily limit "
         "(`key_limit_exceeded`) reached; see Retry-After.",
    503: "A backing service is unavailable; try again later.",
}
RATE_HEADERS = {
    "X-RateLimit-Limit": {"description": "Daily send quota (recipients per UTC day), shared with SMTP.",
                          "schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"description": "Sends left today.", "schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"description": "When the quota resets (Unix time, next 00:00 UTC).",
                          "schema": {"type": "integer"}},
}


def _error(status, headers=None):
    response = {"description": ERROR_TEXT[status],
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if headers:
        response["headers"] = headers
    return response


def _ok(description, ref=None, status="200", headers=None, content_type="application/json", schema=None):
    response = {"description": description,
                "content": {content_type: {"schema": schema or {"$ref": f"#/components/schemas/{ref}"}}}}
    if headers:
        response["headers"] = headers
    return {status: response}


def _op(summary, ok, errors, parameters=(), body=None, public=False, description=None):
    responses = dict(ok)
    for status in (400, 401, 404, 405, 413, 503) + tuple(errors):
        if public and status == 401:
            continue
        responses[str(status)] = _error(status)
    if "429" in responses:
        responses["429"] = _error(429, {"Retry-After": {"description": "Seconds to wait.",
                                                        "schema": {"type": "integer"}}, **RATE_HEADERS})
    op = {"summary": summary, "parameters": list(parameters), "responses": responses}
    if description:
        op["description"] = description
    if body:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
    if public:
        op["security"] = []
    return op


def _path_param(name, schema, description):
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _query_param(name, schema, description):
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


ADDRESS = _path_param("address", {"type": "string", "example": "agent@inboxlayer.dev"}, "The inbox address.")
MESSAGE_ID = _path_param("message_id", {"type": "integer", "minimum": 0}, "Message id within the inbox.")
PUBLIC_ID = _path_param("public_id", {"type": "string", "example": "ob_0123456789abcdef01234567"},
                        "OutboundEmail id (`ob_...`).")
LIMIT = _query_param("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "Page size.")
CURSOR = _query_param("cursor", {"type": "string"}, "`next_cursor` of the previous page.")
WEBHOOK_ID = _path_param("public_id", {"type": "string", "example": "wh_0123456789abcdef01234567"},
                         "Webhook endpoint id (`wh_...`).")
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                   "description": "Retry-safe sends: the same key and body return the first result "
                                  "(header Idempotent-Replayed: true); the same key with another body is 409."}

PATHS = {
    "/v1/openapi.json": {"get": _op("This document", _ok("The OpenAPI document", schema={"type": "object"}),
                                    (), public=True)},
    "/v1/account": {"get": _op("The token's account: plan, quota and rate", _ok("Account", "Account"), ())},
    "/v1/smtp": {"get": _op("How to reach SMTP submission: host, ports, limits, dev certificate",
                            _ok("SMTP settings", "SmtpSettings"), ())},
    "/v1/inboxes": {
        "get": _op("List inboxes", _ok("Inboxes, newest first", "InboxList"), (422,), [LIMIT, CURSOR]),
        "post": _op("Create an inbox", _ok("Created", "Inbox", "201"), (403, 409, 422), body="InboxCreate"),
    },
    "/v1/inboxes/{address}/send": {"post": _op(
        "Send a message from an inbox",
        _ok("Accepted for relay (durable: committed and queued)", "Outbound", "202", RATE_HEADERS),
        (403, 409, 422, 429), [ADDRESS, IDEMPOTENCY_KEY], body="SendRequest",
        description="Builds a MIME message and submits it through the same path as SMTP: the same quota, "
                    "rate limit, Sent copy and relay job. Each envelope recipient (to + cc + bcc, "
                    "de-duplicated) counts once against the daily quota.")},
    "/v1/inboxes/{address}/messages": {"get": _op(
        "List stored messages of an inbox", _ok("Messages, newest first", "MessageList"), (403, 422),
        [ADDRESS, _query_param("folder", {"type": "string", "enum": ["sent", "inbox"], "default": "sent"},
                               "Folder."), LIMIT, CURSOR])},
    "/v1/inboxes/{address}/messages/{message_id}": {"get": _op(
        "One stored message: headers, bodies, attachment list", _ok("Message", "MessageDetail"), (403,),
        [ADDRESS, MESSAGE_ID])},
    "/v1/inboxes/{address}/messages/{message_id}.eml": {"get": _op(
        "One stored message, raw (RFC 5322)",
        _ok("The raw message", content_type="message/rfc822", schema={"type": "string", "format": "binary"}),
        (403,), [ADDRESS, MESSAGE_ID])},
    "/v1/inboxes/{address}/policy": {
        "get": _op("The inbox's recipient policy, first-contact cap and pause state", _ok("Policy", "Policy"), (403,),
                   [ADDRESS]),
        "put": _op("Replace the inbox's allowlist and blocklist (and its own first-contact cap)",
                   _ok("Policy", "Policy"), (403, 422), [ADDRESS], body="PolicyUpdate"),
    },
    "/v1/inboxes/{address}/resume": {"post": _op(
        "Resume a paused inbox (the auto-pause then counts from now)", _ok("Policy", "Policy"), (403,), [ADDRESS])},
    "/v1/suppressions": {
        "get": _op("List the account's suppressed recipients", _ok("Suppressions, newest first", "SuppressionList"),
                   (403, 422), [LIMIT, CURSOR]),
        "post": _op("Suppress one address (or a list)", _ok("Suppressed", status="201", schema={"oneOf": [
            {"$ref": "#/components/schemas/Suppression"},
            {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "array", "items": {"$ref": "#/components/schemas/Suppression"}}}}]}),
                    (403, 422), body="SuppressionCreate"),
    },
    "/v1/suppressions/{address}": {"delete": _op(
        "Take an address (any case or +tag variant) off the suppression list", {"204": {"description": "Removed"}},
        (403,), [_path_param("address", {"type": "string", "example": "bob@example.com"}, "The suppressed address.")])},
    "/v1/outbound": {"get": _op(
        "List outbound emails", _ok("Outbound emails, newest first", "OutboundList"), (403, 422),
        [_query_param("status", {"type": "string", "enum": list(outbound.STATUSES)}, "Only this status."),
         _query_param("inbox", {"type": "string"}, "Only sends from this inbox address."), LIMIT, CURSOR])},
    "/v1/outbound/{public_id}": {"get": _op(
        "One outbound email with its status history", _ok("Outbound email", "Outbound"), (403,), [PUBLIC_ID])},
    "/v1/webhooks": {
        "get": _op("List webhook endpoints", _ok("Endpoints, oldest first", "WebhookList"), (403,)),
        "post": _op("Create a webhook endpoint (its secret is in this answer only)",
                    _ok("Created", "Webhook", "201"), (403, 422), body="WebhookCreate"),
    },
    "/v1/webhooks/{public_id}": {
        "get": _op("One webhook endpoint", _ok("Endpoint", "Webhook"), (403,), [WEBHOOK_ID]),
        "patch": _op("Change url, events, inbox filter or enabled", _ok("Endpoint", "Webhook"), (403, 422),
                     [WEBHOOK_ID], body="WebhookUpdate"),
        "delete": {**_op("Delete a webhook endpoint and its delivery log", {}, (), [WEBHOOK_ID]),
                   "responses": {"204": {"description": "Deleted"},
                                 **{str(s): _error(s) for s in (400, 401, 403, 404, 405, 413, 503)}}},
    },
    "/v1/webhooks/{public_id}/rotate-secret": {"post": _op(
        "New signing secret; the old one keeps signing for 24 h", _ok("Endpoint with its new secret", "Webhook"),
        (403,), [WEBHOOK_ID])},
    "/v1/webhooks/{public_id}/deliveries": {"get": _op(
        "Delivery log: each event sent to this endpoint, its attempts, status codes, latency, response",
        _ok("Deliveries, newest first", "DeliveryList"), (403, 422), [WEBHOOK_ID, LIMIT, CURSOR])},
    "/v1/webhooks/{public_id}/replay": {"post": _op(
        "Deliver one event (same event id) or every event since a time again",
        _ok("Queued", status="202", schema={"type": "object", "required": ["replayed"],
                                            "properties": {"replayed": {"type": "integer"}}}),
        (403, 422), [WEBHOOK_ID], body="WebhookReplay")},
    "/v1/webhooks/{public_id}/test": {"post": _op(
        "Send a `webhook.test` event to this endpoint",
        _ok("Queued", status="202", schema={"type": "object", "required": ["event"],
                                            "properties": {"event": STRING}}),
        (403, 409), [WEBHOOK_ID])},
    "/v1/events": {"get": _op(
        "The event feed: events after a cursor, oldest first",
        _ok("Events", "EventFeed"), (403, 422),
        [_query_param("after", {"type": "string"}, "`next_cursor` of the previous page; omit to start at the "
                                                   "oldest event retained."),
         _query_param("type", {"type": "string"}, "Event types, comma-separated."),
         _query_param("inbox", {"type": "string"}, "Only events of this inbox address."), LIMIT],
        description="Events appear here about a second after they happen, in the order of their cursor; "
                    "poll with `after` = the last `next_cursor`. Retained for `events.retention_days`.")},
    "/v1/audit": {"get": _op(
        "The audit trail: authentications and send decisions, newest first", _ok("Audit rows", "AuditList"),
        (422,), [_query_param("key", {"type": "string", "maxLength": 16}, "Only this key (its prefix)."),
                 _query_param("since", {"type": "string", "format": "date-time"}, "Only rows since then."),
                 LIMIT, CURSOR],
        description="A key with the manage permission reads the whole account's trail; another key its own rows.")},
    "/v1/api-keys": {
        "get": _op("List the account's API keys (prefix only)", _ok("API keys, newest first", "ApiKeyList"),
                   (403, 422), [LIMIT, CURSOR]),
        "post": _op("Create an API key (needs manage); the full key is in this answer only",
                    _ok("Created", "ApiKey", "201"), (403, 422), body="ApiKeyCreate"),
    },
    "/v1/api-keys/{key_id}": {"delete": _op(
        "Revoke an API key (needs manage; only a key no wider than the caller's)",
        {"204": {"description": "Revoked: SMTP and API requests with it fail from now on."}}, (403,),
        [_path_param("key_id", {"type": "integer", "minimum": 0}, "The key's id.")])},
}


def document():
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Inboxlayer API", "version": "1.0.0",
                 "description": "Send email from agent inboxes and follow its delivery. Errors are "
                                "`{\"error\": {\"code\", \"message\"}}`."},
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                          "description": "An API token (`il_...`)."}},
                       "schemas": SCHEMAS},
        "paths": PATHS,
    }


def serve():
    return jsonify(document())
