"""GET/POST /v1/inboxes and GET /v1/account."""
from flask import g
from flask import jsonify

import models
from core import accounts
from core import keys
from core import quota
from webapp.api.auth import require
from webapp.api.errors import ApiError
from webapp.api.errors import Invalid
from webapp.api.outbound import iso
from webapp.api.pagination import paginate
from webapp.api.validation import inbox_request
from webapp.api.validation import json_body
from webapp.views import app_settings


def inbox_json(inbox):
    can_send, reason = models.inbox_can_send(inbox)
    return {"address": inbox.address, "display_name": inbox.display_name,
            "domain": inbox.domain.name if inbox.domain_id else None, "can_send": can_send,
            "cannot_send_reason": reason, "created_at": iso(inbox.created_at)}


def list_inboxes():
    query = models.Inbox.select().where(models.Inbox.user == g.user)
    scoped = keys.inbox_filter(g.token, models.Inbox.id)
    if scoped is not None:  # a scoped key sees its own inboxes only
        query = query.where(scoped)
    return jsonify(paginate(query, models.Inbox.id, inbox_json))


def create_inbox():
    require(keys.MANAGE)
    keys.check_account_wide(g.token, "new inboxes")  # a key confined to some inboxes adds none
    name, domain_name, display_name = inbox_request(json_body())
    typed = app_settings()
    default_domain = typed.server.default_domain
    domain = None
    if domain_name is not None:
        try:
            domain_name = models.normalize_domain(domain_name)
        except models.AddressError as exc:
            raise Invalid("domain", str(exc)) from None
        if domain_name != default_domain:
            domain = models.Domain.get_or_none(models.Domain.name == domain_name, models.Domain.user == g.user)
            if domain is None:
                raise Invalid("domain", f"{domain_name} is neither {default_domain} nor a domain of this account")
    try:
        inbox = accounts.create_inbox(g.user, name, domain, default_domain, display_name,
                                      max_inboxes=typed.plan(g.user.plan).max_inboxes)
    except accounts.InboxLimitReached as exc:
        raise ApiError(403, "inbox_limit_reached", str(exc)[0].upper() + str(exc)[1:]) from None
    except accounts.ReservedAddress as exc:
        raise Invalid("name", str(exc), code="reserved_address") from None
    except models.AddressError as exc:
        raise Invalid("name", str(exc)) from None
    except accounts.InboxExists as exc:
        raise ApiError(409, "inbox_exists", f"The address {exc.address} is already taken") from None
    response = jsonify(inbox_json(inbox))
    response.status_code = 201
    response.headers["Location"] = f"/v1/inboxes/{inbox.address}"
    return response


def quota_json(user):
    usage = quota.usage(user)
    return {"limit": usage["limit"], "used": usage["used"], "remaining": usage["left"],
            "resets_at": iso(usage["resets_at"])}


def account():
    plan = quota.plan_of(g.user)
    return jsonify({"email": g.user.email, "plan": g.user.plan, "quota": quota_json(g.user),
                    "rate": {"per_second": plan["send_rate_per_second"], "burst": plan["send_burst"]},
                    "token": key_json(g.token)})


def key_json(row, token=None):
    """An API key as GET /v1/api-keys and /v1/account show it (``token`` only when just created)."""
    scope = keys.describe(row)
    data = {"id": row.id, "name": row.name, "prefix": row.prefix, "inboxes": scope["inboxes"],
            "permissions": scope["permissions"], "expires_at": iso(scope["expires_at"]),
            "daily_limit": scope["daily_limit"], "sandbox": scope["sandbox"], "created_at": iso(row.created_at),
            "last_used_at": iso(row.last_used_at), "last_used_ip": row.last_used_ip,
            "last_used_via": row.last_used_via, "revoked_at": iso(row.revoked_at)}
    if token is not None:
        data["token"] = token
    return data
