"""What an API key may do: the ONE decision every front-end asks (SMTP AUTH and MAIL, every REST
view, key creation through the API).

A key has an inbox scope (every inbox of its account, or a list), permissions (``send``, ``read``,
``manage`` = create keys and inboxes through the API), an optional expiry, an optional daily send
cap under the account's quota, and ``sandbox`` (accepted, stored, never relayed nor charged).
``check(token, action, inbox)`` answers "may this key do ACTION on INBOX now" and raises a named
refusal (core.errors.KeyRefused / KeyExpired) that each front-end renders its own way.

Order of the checks: expiry, then permission, then scope; the scope answer is the same whether
or not an inbox outside it exists, so a key never learns about inboxes it cannot see.
"""
import datetime
import json
import re
from dataclasses import dataclass

import models
from core import quota
from core.errors import KeyExpired
from core.errors import KeyLimitExceeded
from core.errors import KeyRefused

SEND = "send"
READ = "read"
MANAGE = "manage"
PERMISSIONS = (SEND, READ, MANAGE)
DEFAULT_PERMISSIONS = (SEND, READ)  # a new key with no permissions given: what every key could do
MAX_SCOPE_INBOXES = 100  # inboxes named in one key's scope
MAX_DAILY_LIMIT = 10_000_000  # sends; a bound on the input, far above any plan
MAX_EXPIRY_DAYS = 3650
DURATION = re.compile(r"(\d{1,6})([smhdw])")
DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class KeyInputError(ValueError):
    """A key request we refuse as malformed; ``field`` names the input."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Scope:
    """What a key may do. ``inbox_ids`` None = every inbox of the account."""

    inbox_ids: frozenset | None = None
    permissions: frozenset = frozenset(DEFAULT_PERMISSIONS)
    expires_at: datetime.datetime | None = None
    daily_limit: int | None = None
    sandbox: bool = False


def scope_of(token) -> Scope:
    ids = json.loads(token.inbox_ids) if token.inbox_ids else None
    return Scope(inbox_ids=frozenset(ids) if ids is not None else None,
                 permissions=frozenset(p for p in (token.permissions or "").split(",") if p),
                 expires_at=token.expires_at, daily_limit=token.daily_limit, sandbox=bool(token.sandbox))


def columns(scope: Scope) -> dict:
    """The ApiToken columns that store ``scope``."""
    return {"inbox_ids": json.dumps(sorted(scope.inbox_ids)) if scope.inbox_ids is not None else None,
            "permissions": ",".join(p for p in PERMISSIONS if p in scope.permissions),
            "expires_at": scope.expires_at, "daily_limit": scope.daily_limit, "sandbox": scope.sandbox}


# -- the decision -----------------------------------------------------------------------------------

def is_expired(token, now=None) -> bool:
    return token.expires_at is not None and token.expires_at <= (now or models.utcnow())


def check(token, action=None, inbox=None, now=None) -> None:
    """Raise KeyExpired / KeyRefused unless ``token`` may do ``action`` (SEND, READ, MANAGE or
    None = just be used) on ``inbox`` (an Inbox, or None when no inbox is involved) now. An inbox
    of another account is out of scope for every key."""
    if is_expired(token, now):
        raise KeyExpired()
    if action is not None and action not in (token.permissions or "").split(","):
        raise KeyRefused("permission", f"API key lacks the {action} permission")
    if inbox is not None and not may_see(token, inbox):
        raise KeyRefused("inbox_scope", "inbox outside the API key's scope")


def check_account_wide(token, what) -> None:
    """KeyRefused (``inbox_scope``) unless ``token`` sees every inbox of its account: for actions
    whose effect reaches every inbox (creating inboxes, the suppression list, webhooks), which a key
    confined to some inboxes must not take on the others' behalf. ``what`` names them, plural."""
    if token.inbox_ids:
        raise KeyRefused("inbox_scope", f"{what} are account-wide: use an API key that sees every inbox")


def may_see(token, inbox) -> bool:
    """True when ``inbox`` (an Inbox row) is inside ``token``'s inbox scope."""
    if inbox.user_id != token.user_id:
        return False
    if not token.inbox_ids:
        return True
    return inbox.id in json.loads(token.inbox_ids)


def inbox_filter(token, field):
    """A peewee condition on ``field`` (an inbox foreign key or Inbox.id) keeping the key's inboxes
    only, or None when the key sees every inbox of its account."""
    if not token.inbox_ids:
        return None
    return field.in_(json.loads(token.inbox_ids))


def lacks(wider: Scope, narrower: Scope) -> str | None:
    """Why a key with scope ``wider`` may not create one with ``narrower`` (the first thing the
    new key would have beyond the creator's), or None when it may."""
    extra = narrower.permissions - wider.permissions
    if extra:
        return f"the {', '.join(sorted(extra))} permission"
    if wider.inbox_ids is not None and (narrower.inbox_ids is None or not narrower.inbox_ids <= wider.inbox_ids):
        return "inboxes outside its own scope"
    if wider.expires_at is not None and (narrower.expires_at is None or narrower.expires_at > wider.expires_at):
        return "a later expiry than its own"
    if wider.daily_limit is not None and (narrower.daily_limit is None or narrower.daily_limit > wider.daily_limit):
        return "a higher daily limit than its own"
    if wider.sandbox and not narrower.sandbox:
        return "real sending (it is a sandbox key)"
    return None


def check_narrower(creator, scope: Scope) -> None:
    """KeyRefused (``wider_key``) unless ``creator`` (an ApiToken) covers ``scope``."""
    reason = lacks(scope_of(creator), scope)
    if reason is not None:
        raise KeyRefused("wider_key", f"an API key cannot grant {reason}")


# -- building a scope from input (REST body, CLI options, dashboard form) -----------------------------

def parse_duration(text: str) -> datetime.timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``3600s``: a positive duration of at most MAX_EXPIRY_DAYS."""
    match = DURATION.fullmatch((text or "").strip().lower())
    if not match or int(match.group(1)) == 0:
        raise KeyInputError("expires_in", "must be a number and a unit (s, m, h, d, w), e.g. 30d")
    delta = datetime.timedelta(seconds=int(match.group(1)) * DURATION_SECONDS[match.group(2)])
    if delta > datetime.timedelta(days=MAX_EXPIRY_DAYS):
        raise KeyInputError("expires_in", f"must be at most {MAX_EXPIRY_DAYS} days")
    return delta


def build_scope(user, inboxes=None, permissions=None, expires_at=None, daily_limit=None, sandbox=False,
                now=None) -> Scope:
    """A Scope from user input, checked: ``inboxes`` addresses of ``user``'s (None = all),
    ``permissions`` a subset of PERMISSIONS (None = DEFAULT_PERMISSIONS), ``expires_at`` in the
    future, ``daily_limit`` a positive integer or None. Raises KeyInputError naming the field; an
    address that is not ``user``'s is refused with the same words as one that does not exist."""
    now = now or models.utcnow()
    inbox_ids = None
    if inboxes is not None:
        if not inboxes or len(inboxes) > MAX_SCOPE_INBOXES:
            raise KeyInputError("inboxes", f"must list 1 to {MAX_SCOPE_INBOXES} inbox addresses (omit it for all)")
        inbox_ids = set()
        for address in inboxes:
            if not isinstance(address, str) or not address.strip() or len(address) > 320 \
                    or not address.isprintable():
                raise KeyInputError("inboxes", "must be inbox addresses")
            row = models.Inbox.get_or_none(models.Inbox.address == address.strip().lower(),
                                           models.Inbox.user == user)
            if row is None:
                raise KeyInputError("inboxes", f"no inbox {address.strip()!r} in this account")
            inbox_ids.add(row.id)
        inbox_ids = frozenset(inbox_ids)
    if permissions is None:
        permissions = DEFAULT_PERMISSIONS
    if not permissions or any(p not in PERMISSIONS for p in permissions):
        raise KeyInputError("permissions", f"must be one or more of {', '.join(PERMISSIONS)}")
    if expires_at is not None and expires_at <= now:
        raise KeyInputError("expires_at", "must be in the future")
    if expires_at is not None and expires_at > now + datetime.timedelta(days=MAX_EXPIRY_DAYS):
        raise KeyInputError("expires_at", f"must be at most {MAX_EXPIRY_DAYS} days ahead")
    if daily_limit is not None and (isinstance(daily_limit, bool) or not isinstance(daily_limit, int)
                                    or not 1 <= daily_limit <= MAX_DAILY_LIMIT):
        raise KeyInputError("daily_limit", f"must be an integer from 1 to {MAX_DAILY_LIMIT}")
    if not isinstance(sandbox, bool):
        raise KeyInputError("sandbox", "must be true or false")
    return Scope(inbox_ids=inbox_ids, permissions=frozenset(permissions), expires_at=expires_at,
                 daily_limit=daily_limit, sandbox=sandbox)


def describe(token) -> dict:
    """The key's scope as lists, dashboards and the CLI show it (inbox addresses, not ids)."""
    scope = scope_of(token)
    addresses = None
    if scope.inbox_ids is not None:
        addresses = sorted(i.address for i in models.Inbox.select(models.Inbox.address)
                           .where(models.Inbox.id.in_(list(scope.inbox_ids)), models.Inbox.user == token.user_id))
    return {"inboxes": addresses, "permissions": [p for p in PERMISSIONS if p in scope.permissions],
            "expires_at": scope.expires_at, "daily_limit": scope.daily_limit, "sandbox": scope.sandbox}


# -- the per-key daily cap --------------------------------------------------------------------------

def key_sends_today(token_id) -> int:
    row = models.KeyUsage.get_or_none(models.KeyUsage.token == token_id, models.KeyUsage.day == models.today())
    return row.count if row else 0


def check_key_limit(token, recipients, used=None) -> None:
    """KeyLimitExceeded if ``recipients`` more sends would pass the key's daily cap (no reservation)."""
    if token is None or token.daily_limit is None:
        return
    if used is None:
        used = key_sends_today(token.id)
    if used + recipients > token.daily_limit:
        raise limit_exceeded(used, token.daily_limit)


def limit_exceeded(used, limit) -> KeyLimitExceeded:
    return KeyLimitExceeded(used, limit, retry_after=quota.seconds_to_reset())
