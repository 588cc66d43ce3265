"""Recipient safety over REST: /v1/suppressions and /v1/inboxes/{address}/policy (core/recipients.py)."""
from flask import g
from flask import jsonify

import models
from core import keys
from core import recipients
from webapp.api.auth import owned_inbox
from webapp.api.auth import require
from webapp.api.errors import ApiError
from webapp.api.errors import Invalid
from webapp.api.outbound import iso
from webapp.api.pagination import paginate
from webapp.api.validation import json_body

SUPPRESSION_FIELDS = {"address", "addresses", "reason"}
POLICY_FIELDS = {"allow", "block", "new_recipients_per_day"}
MAX_BODY = 1024 * 1024  # bytes: 2 x 1000 policy entries of 320 characters fit with room to spare


def _fields(body, allowed):
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(unknown[0], f"unknown field; allowed: {', '.join(sorted(allowed))}")


def _invalid(exc):
    return Invalid(exc.field, str(exc))


def list_suppressions():
    require(keys.READ)
    return jsonify(paginate(recipients.list_suppressions(g.user), models.Suppression.id, recipients.suppression_json))


def add_suppression():
    require(keys.MANAGE)
    keys.check_account_wide(g.token, "suppressions")  # the list applies to every inbox
    body = json_body(MAX_BODY)
    _fields(body, SUPPRESSION_FIELDS)
    if ("address" in body) == ("addresses" in body):
        raise Invalid("address", "give either address (one) or addresses (a list)")
    batch = "addresses" in body
    addresses = body["addresses"] if batch else [body["address"]]
    if not isinstance(addresses, list) or not addresses:
        raise Invalid("addresses", "must be a non-empty list of addresses")
    try:
        rows = recipients.add_suppressions(g.user, addresses, body.get("reason"))
    except recipients.InvalidEntry as exc:
        raise _invalid(exc) from None
    response = jsonify({"data": [recipients.suppression_json(r) for r in rows]} if batch
                       else recipients.suppression_json(rows[0]))
    response.status_code = 201
    return response


def remove_suppression(address):
    require(keys.MANAGE)
    keys.check_account_wide(g.token, "suppressions")
    if not recipients.remove_suppression(g.user, address):
        raise ApiError(404, "not_found", "This address is not on the account's suppression list")
    return "", 204


def policy_json(inbox):
    policy = recipients.policy_of(inbox)
    fresh = models.Inbox.get_by_id(inbox.id)
    return {"allow": policy["allow"], "block": policy["block"],
            "new_recipients_per_day": fresh.new_recipients_per_day,
            "effective_new_recipients_per_day": recipients.cap_of(g.user, fresh),
            "new_recipients_today": recipients.new_today(fresh),
            "paused": fresh.paused_at is not None, "paused_reason": fresh.paused_reason,
            "paused_at": iso(fresh.paused_at)}


def get_policy(address):
    return jsonify(policy_json(owned_inbox(address, keys.READ)))


def put_policy(address):
    inbox = owned_inbox(address, keys.MANAGE)
    body = json_body(MAX_BODY)
    _fields(body, POLICY_FIELDS)
    try:
        recipients.set_policy(inbox, body.get("allow", []), body.get("block", []),
                              body.get("new_recipients_per_day", "keep") if "new_recipients_per_day" in body
                              else "keep")
    except recipients.InvalidEntry as exc:
        raise _invalid(exc) from None
    return jsonify(policy_json(inbox))


def resume(address):
    inbox = owned_inbox(address, keys.MANAGE)
    recipients.resume(inbox)
    return jsonify(policy_json(inbox))
