"""Accounts, inboxes and API tokens: the one place their rules live.

Every front-end (dashboard, REST API, admin CLI, SMTP AUTH) calls these functions instead of
orchestrating models itself. Each function that writes owns its unit of work (``with
db.atomic():``); the caller scopes the connection (request, command, SMTP lookup), as for every
database use. Uniqueness comes from the unique indexes (``IntegrityError``), never from a racy
check-then-insert.
"""
import hashlib
import hmac
import logging
import secrets
import unicodedata

from peewee import IntegrityError
from werkzeug.security import generate_password_hash  # password hashing only: no HTTP in it

import models
from core import blobs
from core import keys
from core import outbound
from core.text import BIDI_CONTROLS
from core.text import ENCODED_WORD

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 8  # characters, for the dashboard form and `inboxlayer users create` alike
TOKEN_PREFIX = "il_"
TOKEN_PREFIX_SHOWN = 12  # characters of a token kept in lists: "il_" + 9 of the random part
MAX_TOKEN_CHARS = 200  # a longer presented token is refused before hashing
LAST_USED_RESOLUTION = 60  # seconds: last_used_at is written at most this often per token
IN_FLIGHT = outbound.ACTIVE  # statuses whose relay job may still read the message file

# Role addresses on the shared default domain belong to its operator, never to a tenant: RFC 2142's
# mailbox names, the names a CA may mail to validate a domain (CA/B Baseline Requirements 3.2.2.4.4:
# admin, administrator, webmaster, hostmaster, postmaster) and what bounces and receipts come from.
RESERVED_LOCAL_PARTS = frozenset({
    "abuse", "noc", "security", "info", "marketing", "sales", "support", "hostmaster", "postmaster",
    "usenet", "news", "webmaster", "www", "uucp", "ftp",  # RFC 2142
    "admin", "administrator",  # CA/B BR 3.2.2.4.4 (with hostmaster, postmaster, webmaster)
    "noreply", "no-reply", "no_reply", "no.reply", "billing", "mailer-daemon", "root",
})


# -- refusals ---------------------------------------------------------------------------------

class AccountError(ValueError):
    """A refused account request; str() is the reason, for a form field or the CLI."""


class InvalidEmail(AccountError):
    pass


class WeakPassword(AccountError):
    pass


class AccountExists(AccountError):
    """An account with this email address exists (the unique index said so)."""


class DisplayNameError(models.AddressError):
    """A display name we refuse. ``reason`` ("must ...") is for a form field or a 422 naming the
    field; str() names the display name, for callers that only catch AddressError."""

    def __init__(self, reason):
        super().__init__(f"the display name {reason}")
        self.reason = reason


def clean_display_name(value):
    """The display name as stored, or DisplayNameError: the one rule for every front-end
    (dashboard form, REST API, CLI; ``create_inbox`` applies it again).

    One line of at most models.MAX_DISPLAY_NAME characters after runs of spaces and tabs are folded to
    one space; no control characters, line or paragraph separators, lone surrogates or bidi
    controls; no RFC 2047 encoded-words (the name is encoded when the From: header is written).
    """
    value = value or ""
    if len(value) > 10 * models.MAX_DISPLAY_NAME:  # bound the scan below; folding never shrinks it this much
        raise DisplayNameError(f"must be at most {models.MAX_DISPLAY_NAME} characters")
    for char in value:
        if char in BIDI_CONTROLS:
            raise DisplayNameError(f"must not contain bidirectional control characters (U+{ord(char):04X}), "
                                   "which change how the name reads")
        if char != "\t" and unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            raise DisplayNameError("must be one line without control characters")
    value = " ".join(value.split())
    if len(value) > models.MAX_DISPLAY_NAME:
        raise DisplayNameError(f"must be at most {models.MAX_DISPLAY_NAME} characters")
    if ENCODED_WORD.search(value):
        raise DisplayNameError("must not contain RFC 2047 encoded-words (=?charset?q?...?=): write the name "
                               "itself, it is encoded as needed")
    return value


class ReservedAddress(models.AddressError):
    """The name is a role address of the shared domain (postmaster@, abuse@, ...)."""


class InboxLimitReached(Exception):
    """The account already has its plan's ``max_inboxes``."""


class InboxExists(Exception):
    """The address is taken (the unique index said so). ``address`` is the one refused."""

    def __init__(self, address):
        super().__init__(f"the address {address} is already taken")
        self.address = address


class InboxBusy(Exception):
    """The inbox still has messages being relayed; ``in_flight`` counts them."""

    def __init__(self, in_flight):
        super().__init__(f"{in_flight} message(s) still being sent")
        self.in_flight = in_flight


# -- users ------------------------------------------------------------------------------------

def normalize_email(email):
    """The address as stored: validated (syntax only, no DNS), normalised, lower-case."""
    # Loaded on first use (not for a cycle): keeps `inboxlayer --help` and SMTP start-up fast.
    from email_validator import EmailNotValidError
    from email_validator import validate_email

    try:
        return validate_email(email or "", check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise InvalidEmail(str(exc)) from None


def create_user(email, password, plan):
    """Create an account; returns the User. InvalidEmail, WeakPassword, or AccountExists (from
    the unique index on the email, so two concurrent sign-ups cannot both succeed)."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    email = normalize_email(email)
    password_hash = generate_password_hash(password)
    try:
        with models.db.atomic():
            return models.User.create(email=email, password_hash=password_hash, plan=plan)
    except IntegrityError:
        raise AccountExists(f"an account {email!r} already exists") from None


# -- API tokens (also the SMTP password) -----------------------------------------------------

def hash_token(token):
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def create_token(user, name, scope=None, created_by=None):
    """Create a token; returns (ApiToken, full_token). The full token is never stored.

    ``scope`` (core.keys.Scope; default: every inbox, send + read, no expiry, no cap, not
    sandboxed) says what the key may do; with ``created_by`` (the ApiToken asking, through the
    API) a scope wider than the creator's is KeyRefused (core.keys.check_narrower)."""
    scope = scope or keys.Scope()
    if created_by is not None:
        keys.check_narrower(created_by, scope)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with models.db.atomic():
        row = models.ApiToken.create(user=user, name=name, prefix=token[:TOKEN_PREFIX_SHOWN],
                                     token_hash=hash_token(token), **keys.columns(scope))
    return row, token


def lookup_token(token, client_ip=None, via=None):
    """The live ApiToken for ``token`` (its ``user`` joined; marked used, with the client's IP
    and protocol ``via`` when given), or None. Expiry and scope are core/keys.py's to judge.

    The lookup is by sha256 of the presented token, so the database compares hashes, not
    secrets; the final compare_digest keeps the check constant-time on our side too.
    """
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
        return None
    digest = hash_token(token)
    row = models.live_token_by_hash(digest)
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    now = models.utcnow()
    client_ip = (client_ip or "")[:64] or row.last_used_ip
    via = via or row.last_used_via
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > LAST_USED_RESOLUTION \
            or (client_ip, via) != (row.last_used_ip, row.last_used_via):
        # Throttled write: a busy SMTP client should not turn every AUTH into an UPDATE.
        with models.db.atomic():
            models.ApiToken.update(last_used_at=now, last_used_ip=client_ip, last_used_via=via).where(
                models.ApiToken.id == row.id).execute()
        row.last_used_at, row.last_used_ip, row.last_used_via = now, client_ip, via
    return row


def presented_key(token):
    """(user id, token id, prefix) of the key a refused ``token`` claims to be, by its shown prefix,
    so a failed login with a wrong or revoked token shows in that key owner's audit trail; the
    ids are None when no key has that prefix. Never a proof of anything: only for the record."""
    prefix = (token or "")[:TOKEN_PREFIX_SHOWN]
    if len(prefix) < TOKEN_PREFIX_SHOWN or not prefix.startswith(TOKEN_PREFIX) or not prefix.isprintable():
        return None, None, prefix if prefix.isprintable() else ""
    row = models.ApiToken.select(models.ApiToken.id, models.ApiToken.user).where(
        models.ApiToken.prefix == prefix).first()
    return (row.user_id, row.id, prefix) if row else (None, None, prefix)


def revoke_token(user, token_id):
    """Revoke one of ``user``'s tokens. Returns True if a live token was revoked."""
    with models.db.atomic():
        return bool(models.ApiToken.update(revoked_at=models.utcnow())
                    .where(models.ApiToken.id == token_id, models.ApiToken.user == user,
                           models.ApiToken.revoked_at.is_null())
                    .execute())


# -- inboxes ----------------------------------------------------------------------------------

def is_reserved_local_part(local_part):
    """True for a role name, compared lower-case and without a ``+tag``."""
    return (local_part or "").strip().lower().split("+", 1)[0] in RESERVED_LOCAL_PARTS


def create_inbox(user, local_part, domain=None, default_domain="inboxlayer.dev", display_name="",
                 max_inboxes=0, allow_reserved=False):
    """Create the inbox ``local_part@(domain or default_domain)``; AddressError on bad input.

    The one place the inbox rules live (dashboard, API and CLI all call it): a role name on the
    default domain is ReservedAddress unless ``allow_reserved`` (the operator's CLI); the domain
    must be ``user``'s; the display name passes clean_display_name; an account holding
    ``max_inboxes`` (its plan's; 0 = no limit) gets InboxLimitReached, counted under a lock on the
    account row; a taken address is InboxExists (from the unique index, not a racy pre-check).
    """
    local_part = (local_part or "").strip().lower()
    if not local_part or len(local_part) > 64:
        raise models.AddressError("the inbox name must be 1 to 64 characters")
    if domain is None and not allow_reserved and is_reserved_local_part(local_part):
        raise ReservedAddress(f"{local_part}@{default_domain} is a reserved role address (postmaster, abuse, "
                              "admin, support and the like belong to the operator of the shared domain); "
                              "choose another name")
    if not set(local_part) <= models.LOCAL_PART_ALLOWED or local_part[0] in ".-" or local_part[-1] in ".-" \
            or ".." in local_part:
        raise models.AddressError("the inbox name may use letters, digits, '.', '-' and '_' "
                                  "(not first or last, no '..')")
    if domain is not None and domain.user_id != user.id:
        raise models.AddressError("that domain is not yours")
    display_name = clean_display_name(display_name)
    address = f"{local_part}@{domain.name if domain else default_domain}"
    try:
        with models.db.atomic():
            if max_inboxes:
                # Lock the account row first (a write: Postgres row lock, SQLite's write lock) so
                # that two concurrent creates count one after the other and the cap holds.
                models.User.update(plan=models.User.plan).where(models.User.id == user.id).execute()
                if models.Inbox.select().where(models.Inbox.user == user.id).count() >= max_inboxes:
                    raise InboxLimitReached(f"this account has reached its plan's limit of {max_inboxes} "
                                            "inboxes; delete one or upgrade the plan")
            return models.Inbox.create(user=user, local_part=local_part, domain=domain, address=address,
                                       display_name=display_name)
    except IntegrityError:
        raise InboxExists(address) from None


def delete_inbox(inbox):
    """Delete ``inbox`` with its Sent folder, outbound history and stored message files.

    InboxBusy while a message of it is queued or being relayed: deleting then would pull the file
    from under the relay worker. Rows go first, in one transaction, children explicitly (we do not
    rely on each backend enforcing ON DELETE CASCADE); the files after the commit, so a failed
    file delete leaves an orphan file, never a row pointing at nothing.
    """
    in_flight = models.OutboundEmail.select().where(models.OutboundEmail.inbox == inbox,
                                                    models.OutboundEmail.status.in_(IN_FLIGHT)).count()
    if in_flight:
        raise InboxBusy(in_flight)
    with models.db.atomic():
        blob_keys = [m.blob_key for m in models.Message.select(models.Message.blob_key)
                     .where(models.Message.inbox == inbox)]
        outbound_ids = models.OutboundEmail.select(models.OutboundEmail.id).where(models.OutboundEmail.inbox == inbox)
        models.OutboundEvent.delete().where(models.OutboundEvent.outbound.in_(outbound_ids)).execute()
        models.OutboundEmail.delete().where(models.OutboundEmail.inbox == inbox).execute()
        message_ids = models.Message.select(models.Message.id).where(models.Message.inbox == inbox)
        models.MessageFlags.delete().where(models.MessageFlags.message.in_(message_ids)).execute()
        models.Message.delete().where(models.Message.inbox == inbox).execute()
        inbox.delete_instance()
    for key in blob_keys:
        try:
            blobs.store().delete(key)
        except blobs.BlobError as exc:
            log.warning("could not delete blob %s of deleted inbox: %s", key, exc)
