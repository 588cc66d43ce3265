"""Custom sending domains: claims, the SES identity, the DNS records users publish, their checks.

A row of ``Domain`` is one account's *claim* on a name, with its own verification token. Several
accounts may hold pending claims on one name; DNS proof decides: the first claim whose token is in
TXT ``_inboxlayer.<name>`` (with the three Easy DKIM CNAMEs) becomes ``verified`` (a partial unique
index keeps it to one verified row per name) and the other never-verified claims are deleted with
their inboxes (which could never send). A verified name cannot be added by another account until it
loses verification. Names we send from ourselves (``server.default_domain``, its parents and
subdomains, ``dns.reserved_domains``) and public suffixes cannot be added; each plan caps its
domains (``max_domains``) and a claim never verified within ``dns.pending_expiry`` is deleted.

A row records whether its CreateEmailIdentity made the SES identity (``ses_identity_created``;
AlreadyExists = someone else's, e.g. the operator's). Deleting the last row of a name deletes the
identity only if one of its rows created it; the flag passes to a remaining row otherwise.

Checks: missing records keep a claim ``pending``; a record present with the wrong value makes it
``failed`` with a reason naming the record. SPF and DMARC are recommendations and never block. A
DNS outage changes no status. Verified domains are re-checked every ``dns.recheck_interval``; one
that fails its re-checks for ``dns.recheck_grace`` goes ``failed`` (its inboxes stop sending). The
periodic pass (``check_domains``) checks due domains concurrently within ``dns.check_budget``.
"""
import datetime
import json
import logging
import secrets
import string
import threading
import time
from typing import Any

import dns.exception
import dns.resolver
from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError
from peewee import IntegrityError
from publicsuffixlist import PublicSuffixList

import models
import settings
from core import event_vocabulary as public
from core import events
from core import ses

log = logging.getLogger(__name__)

VERIFY_LABEL = "_inboxlayer"
VERIFY_PREFIX = "inboxlayer-verification="
DKIM_TARGET = "dkim.amazonses.com"
SPF_VALUE = "v=spf1 include:amazonses.com ~all"
# SES DKIM statuses that mean the identity cannot sign (sesv2 DkimAttributes.Status).
SES_DKIM_FAILED = {"FAILED", "TEMPORARY_FAILURE"}
TRANSIENT_DNS_ERRORS = (dns.resolver.NoNameservers, dns.exception.Timeout)
DUE_SLACK = 0.1  # of dns.check_interval: a domain checked on the previous pass is due on this one
PUBLIC_SUFFIXES = PublicSuffixList()  # the list shipped with the package: no download at run time


class DomainRefused(Exception):
    """A domain cannot be added; the message is user-facing, ``status`` the HTTP status to answer."""

    def __init__(self, message, status=422):
        super().__init__(message)
        self.status = status


class DomainSetupError(Exception):
    """SES refused or could not be reached while setting up an identity (message is user-facing)."""


# -- SES identity ---------------------------------------------------------------------------------

def ses_client() -> Any:
    return ses.new_client("domains", settings.current().ses)


def create_identity(name):
    """Create the SES domain identity with Easy DKIM; return (its three DKIM tokens, created).

    ``created`` is False when the identity already existed (another claim's, or one the operator
    set up): it is reused, and this claim must never delete it. Asking for a 2048-bit key
    (NextSigningKeyLength) still selects Easy DKIM.
    """
    client = ses_client()
    try:
        # Look first: moto's CreateEmailIdentity overwrites an existing identity instead of raising
        # AlreadyExistsException as SES does. Two adds racing past the look are told apart by SES's
        # AlreadyExists; under moto both count as creators, which only delays the delete until
        # neither row is left (see delete_domain).
        response, created = _existing_identity(client, name), False
        if response is None:
            try:
                response, created = client.create_email_identity(
                    EmailIdentity=name, DkimSigningAttributes={"NextSigningKeyLength": "RSA_2048_BIT"}), True
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "AlreadyExistsException":
                    raise
                response = client.get_email_identity(EmailIdentity=name)
    except (ClientError, BotoCoreError) as exc:
        log.warning("SES identity setup failed for %s: %s", name, exc)
        raise DomainSetupError("Amazon SES could not set up this domain right now; please try again "
                               "in a minute") from exc
    tokens = (response.get("DkimAttributes") or {}).get("Tokens") or []
    if len(tokens) != 3:
        # Real SES always returns three Easy DKIM tokens; the local stand-in (moto) returns none,
        # so we mint tokens of the same shape to keep the DNS flow identical in dev and tests.
        log.info("SES returned %d DKIM tokens for %s; using local tokens (stand-in)", len(tokens), name)
        tokens = [_dkim_token() for _ in range(3)]
    return tokens, created


def _existing_identity(client, name):
    """GetEmailIdentity's answer, or None when SES has no identity of that name."""
    try:
        return client.get_email_identity(EmailIdentity=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NotFoundException":
            return None
        raise


def delete_identity(name):
    """Remove the SES identity; failures are logged, not raised (the domain row is gone anyway).
    Callers go through ``delete_domain``, which decides whether the identity is ours to delete."""
    try:
        ses_client().delete_email_identity(EmailIdentity=name)
    except (ClientError, BotoCoreError) as exc:
        log.warning("could not delete SES identity %s: %s", name, exc)


def ses_dkim_problem(name):
    """A reason string if SES reports DKIM failed for ``name``, else None (unknown counts as fine:
    the stand-in never finishes verification, and real SES re-checks on its own schedule)."""
    try:
        identity = ses_client().get_email_identity(EmailIdentity=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NotFoundException":
            return f"Amazon SES has no identity for {name}; delete the domain and add it again"
        log.warning("SES identity lookup failed for %s: %s", name, exc)
        return None
    except BotoCoreError as exc:
        log.warning("SES identity lookup failed for %s: %s", name, exc)
        return None
    status = (identity.get("DkimAttributes") or {}).get("Status")
    if status in SES_DKIM_FAILED:
        return f"Amazon SES reports DKIM status {status} for {name}"
    return None


def _dkim_token():
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def new_verification_token():
    return secrets.token_hex(16)


# -- the records users publish ---------------------------------------------------------------------

def dkim_tokens(domain):
    try:
        tokens = json.loads(domain.dkim_tokens or "[]")
    except ValueError:
        return []
    return [t for t in tokens if isinstance(t, str)]


def expected_records(domain):
    """The records to publish, in the order the page lists them. ``required`` ones gate verification."""
    records = [{"type": "TXT", "name": f"{VERIFY_LABEL}.{domain.name}",
                "value": VERIFY_PREFIX + domain.verification_token, "purpose": "Ownership", "required": True}]
    for token in dkim_tokens(domain):
        records.append({"type": "CNAME", "name": f"{token}._domainkey.{domain.name}",
                        "value": f"{token}.{DKIM_TARGET}", "purpose": "DKIM", "required": True})
    records.append({"type": "TXT", "name": domain.name, "value": SPF_VALUE, "purpose": "SPF (recommended)",
                    "required": False})
    records.append({"type": "TXT", "name": f"_dmarc.{domain.name}",
                    "value": f"v=DMARC1; p=none; rua=mailto:dmarc@{domain.name}",
                    "purpose": "DMARC (recommended)", "required": False})
    return records


# -- DNS ----------------------------------------------------------------------------------------------

def make_resolver() -> dns.resolver.Resolver:
    """dnspython resolver for ``dns.resolver`` = "ip[:port]" (``[v6]:port`` for IPv6); empty = system."""
    dns_settings = settings.current().dns
    configured = dns_settings.resolver.strip()
    if not configured:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        host, port = _split_host_port(configured)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = resolver.timeout = dns_settings.timeout
    return resolver


def _split_host_port(value):
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, 53


def _lookup(resolver, name, rdtype, deadline=None):
    """The record texts at ``name``; [] when the name or type does not exist. With ``deadline``
    (time.monotonic()), the lookup gives up by then with BudgetSpent."""
    lifetime, cut = resolver.lifetime, False
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BudgetSpent("the check's time budget is spent")
        lifetime, cut = min(lifetime, left), left < lifetime
    try:
        answer = resolver.resolve(name, rdtype, raise_on_no_answer=False, lifetime=lifetime)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        if cut:  # the budget, not the nameserver, ran out: nothing to record about the domain
            raise BudgetSpent("the check's time budget is spent") from None
        raise
    if answer.rrset is None:
        return []
    if rdtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset]
    return [r.to_text().rstrip(".").lower() for r in answer.rrset]


def evaluate(domain, resolver, deadline=None):
    """(status, reason) from DNS alone. Raises TRANSIENT_DNS_ERRORS when DNS cannot answer
    and BudgetSpent once ``deadline`` passes."""
    missing, wrong = [], []
    for record in expected_records(domain):
        if not record["required"]:
            continue
        found = _lookup(resolver, record["name"], record["type"], deadline)
        expected = record["value"] if record["type"] == "TXT" else record["value"].lower()
        if expected in found:
            continue
        if not found:
            missing.append(f"{record['type']} {record['name']}")
        elif record["type"] == "CNAME":
            wrong.append(f"DKIM record {record['name']} points to {found[0]}, expected {record['value']}")
        elif not any(v.startswith(VERIFY_PREFIX) for v in found):
            missing.append(f"{record['type']} {record['name']}")
        else:
            wrong.append(f"TXT {record['name']} holds a different verification token than this domain's")
    if len(dkim_tokens(domain)) != 3:
        return "failed", "The DKIM tokens for this domain are missing; delete and add the domain again"
    if wrong:
        return "failed", "; ".join(wrong)
    if missing:
        return "pending", "Not found in DNS yet: " + ", ".join(missing)
    return "verified", None


# -- claims: add, delete, expire ----------------------------------------------------------------------

def blocked_reason(name: str, config: "settings.Settings | dict | None" = None) -> str | None:
    """Why ``name`` may not be added by any account, or None.

    Our own names are refused with their parents and subdomains: a tenant holding ``inboxlayer.dev``'s
    parent or a ``x.inboxlayer.dev`` would share (or, through SES's subdomain rule, borrow) the
    identity every default inbox sends from. Public suffixes (``com``, ``co.uk``, ``github.io``) are
    nobody's to prove.
    """
    config = settings.typed(config)
    default = config.server.default_domain.strip().lower().rstrip(".")
    reserved = [n.strip().lower().rstrip(".") for n in config.dns.reserved_domains if n.strip()]
    for ours in [default] + reserved:
        if name == ours or name.endswith("." + ours):
            if ours == default:
                return f"{default} is ours; inboxes on it need no domain setup."
            return f"{ours} is reserved by this Inboxlayer service."
        if ours.endswith("." + name):
            return f"{name} is a parent domain of {ours}, which is ours."
    if PUBLIC_SUFFIXES.is_public(name):
        return (f"{name} is a public suffix (like com or co.uk) that no one account owns; add a domain "
                f"registered under it.")
    return None


def add_domain(user: models.User, name: str, config: "settings.Settings | dict | None" = None) -> models.Domain:
    """Add ``user``'s claim on ``name`` and set up the SES identity; returns the pending Domain.

    Raises DomainRefused (422: invalid, ours, a public suffix, already this account's, verified by
    another account, over the plan's ``max_domains``; 503: SES unreachable, nothing is kept). A
    pending claim of another account does not stop this one: DNS proof decides (see the module).
    """
    config = settings.typed(config)
    try:
        name = models.normalize_domain(name)
    except models.AddressError:
        raise DomainRefused("That is not a valid domain name (e.g. mail.example.com).") from None
    reason = blocked_reason(name, config)
    if reason:
        raise DomainRefused(reason)
    limit = config.plan(user.plan).max_domains
    Domain = models.Domain
    try:
        with models.db.atomic():
            # A no-op write to the account row: concurrent adds of one account queue here, so the
            # count below cannot be raced past the cap (Postgres row lock; SQLite's one writer).
            models.User.update(plan=models.User.plan).where(models.User.id == user.id).execute()
            if Domain.select().where(Domain.user == user, Domain.name == name).exists():
                raise DomainRefused("You have already added this domain.")
            if Domain.select().where(Domain.name == name, Domain.status == "verified").exists():
                raise DomainRefused("This domain is already verified by another Inboxlayer account.")
            if Domain.select().where(Domain.user == user).count() >= limit:
                raise DomainRefused(f"Your plan allows {limit} domain{'s' if limit != 1 else ''}; delete one "
                                    f"you no longer use before adding another.")
            domain = Domain.create(user=user, name=name, status="pending",
                                   verification_token=new_verification_token())
    except IntegrityError:  # the (user, name) unique index: a concurrent add of the same name
        raise DomainRefused("You have already added this domain.") from None
    try:
        tokens, created = create_identity(name)
    except DomainSetupError as exc:
        delete_domain(domain)
        raise DomainRefused(str(exc), 503) from exc
    changes = {"dkim_tokens": json.dumps(tokens)}
    if created:
        changes["ses_identity_created"] = True  # never set back to False: the flag may have been passed to us
    with models.db.atomic():
        updated = Domain.update(**changes).where(Domain.id == domain.id).execute()
    if not updated:  # the claim vanished meanwhile (deleted, or another account verified the name)
        if created:
            _release_identity(name)
        raise DomainRefused("This domain was just verified by another Inboxlayer account.")
    return Domain.get_by_id(domain.id)


def delete_domain(domain):
    """Delete one claim (its inboxes go with it). The SES identity is deleted only if one of the
    name's rows created it and no row of the name remains; otherwise a remaining row inherits it."""
    Domain = models.Domain
    with models.db.atomic():
        row = Domain.get_or_none(Domain.id == domain.id)
        if row is None:
            return False
        row.delete_instance()
    if row.ses_identity_created:
        _release_identity(row.name)
    return True


def _release_identity(name):
    """The row that held our SES identity of ``name`` is gone: pass the flag to a remaining row of
    the name, or delete the identity when none remains."""
    Domain = models.Domain
    with models.db.atomic():
        heir = (Domain.select(Domain.id).where(Domain.name == name)
                .order_by((Domain.status == "verified").desc(), Domain.id).first())
        if heir is not None:
            Domain.update(ses_identity_created=True).where(Domain.id == heir.id).execute()
    if heir is None:
        delete_identity(name)


def expires_at(domain: models.Domain) -> datetime.datetime:
    """When ``domain``, if never verified by then, is deleted by ``expire_pending``."""
    return domain.created_at + datetime.timedelta(seconds=settings.current().dns.pending_expiry)


def expire_pending(now: datetime.datetime | None = None) -> int:
    """Delete claims never verified within ``dns.pending_expiry`` (with their inboxes, which could
    never send): a name cannot be held forever by a claim that never proves it. Returns how many."""
    now = now or models.utcnow()
    cutoff = now - datetime.timedelta(seconds=settings.current().dns.pending_expiry)
    Domain = models.Domain
    expired = list(Domain.select().where(Domain.verified_at.is_null(), Domain.status != "verified",
                                         Domain.created_at <= cutoff))
    for domain in expired:
        if delete_domain(domain):
            log.info("domain %s of user %s expired unverified", domain.name, domain.user_id)
    return len(expired)


# -- checks -----------------------------------------------------------------------------------------

class BudgetSpent(dns.exception.Timeout):
    """The periodic pass's time budget ran out before this domain's lookups finished."""


def check_domain(domain_id, deadline=None):
    """Check one domain's DNS (and SES's DKIM status) and record the outcome. Returns the Domain,
    or None if it no longer exists. A DNS outage records the error but never changes the status.
    With ``deadline`` (time.monotonic()), raises BudgetSpent, recording nothing, once it passes.

    No database connection is held while DNS and SES answer: a pass of many checks waiting on a
    silent nameserver must not drain the worker's connection pool."""
    with models.db.connection_context():
        domain = models.Domain.get_or_none(models.Domain.id == domain_id)
    if domain is None:
        return None
    transient = False
    try:
        status, reason = evaluate(domain, make_resolver(), deadline)
    except BudgetSpent:
        raise
    except TRANSIENT_DNS_ERRORS as exc:
        transient, status, reason = True, domain.status, f"DNS lookup failed, will retry: {exc.__class__.__name__}"
    except ValueError as exc:  # a malformed dns.resolver setting: the operator's to fix, not the user's
        log.error("dns.resolver setting is invalid: %s", exc)
        transient, status, reason = True, domain.status, "DNS lookup failed, will retry: resolver misconfigured"
    else:
        if status == "verified":
            problem = ses_dkim_problem(domain.name)
            if problem:
                status, reason = "failed", problem
    with models.db.connection_context():
        return _record(domain, status, reason, transient)


def _record(domain, status, reason, transient):
    """Write one check's outcome: the re-check grace of a verified domain, and the takeover when
    a claim proves DNS first."""
    Domain = models.Domain
    now = models.utcnow()
    changes = {"last_error": reason, "last_checked_at": now}
    proving = False
    if transient:
        pass
    elif domain.status == "verified" and status != "verified":
        since = domain.failing_since or now
        grace = settings.current().dns.recheck_grace
        if (now - since).total_seconds() < grace:
            until = since + datetime.timedelta(seconds=grace)
            changes.update(failing_since=since, last_error=(
                f"Re-check failed: {reason}. Inboxes on this domain stop sending at {until:%Y-%m-%d %H:%M} UTC "
                f"unless the records are back"))
        else:
            changes.update(status="failed", failing_since=None)
    elif status == "verified":
        changes.update(status="verified", failing_since=None)
        if domain.status != "verified":
            changes["verified_at"] = now
            proving = True
    else:
        # A domain verified once and now missing records has lost them: failed, not pending again.
        changes["status"] = "failed" if status == "pending" and domain.verified_at is not None else status
    with models.db.atomic():
        if proving:
            _lock_name(domain.name)
            try:
                with models.db.atomic():
                    won = Domain.update(**changes).where(Domain.id == domain.id).execute()
            except IntegrityError:  # the partial unique index: another account's claim is verified
                won = 0
                Domain.update(last_checked_at=now, last_error=(
                    f"Another Inboxlayer account has verified {domain.name}; this claim can be verified only "
                    f"after that one is deleted or loses verification")).where(Domain.id == domain.id).execute()
            if won:
                _drop_losing_claims(domain)
                _domain_event(domain, "verified", None)
        else:
            changed = Domain.update(**changes).where(Domain.id == domain.id).execute()
            new_status = changes.get("status", domain.status)
            if changed and new_status != domain.status and new_status in ("verified", "failed"):
                _domain_event(domain, new_status, changes.get("last_error"))
    checked = Domain.get_or_none(Domain.id == domain.id)
    if checked is not None and checked.status != domain.status:
        log.info("domain %s: %s -> %s%s", domain.name, domain.status, checked.status,
                 f" ({checked.last_error})" if checked.last_error else "")
    return checked


def _domain_event(domain, status, reason):
    """``domain.verified`` / ``domain.failed`` for the account, in the transaction of the change."""
    events.record(public.DOMAIN_VERIFIED if status == "verified" else public.DOMAIN_FAILED, domain.user_id,
                  {"domain": domain.name, "status": status, "last_error": reason})


def _lock_name(name):
    """Lock every claim on ``name`` in id order (Postgres), so two claims proving at once cannot
    deadlock; SQLite has one writer at a time already."""
    if isinstance(models.db.obj, models.PostgresqlDatabase):
        list(models.Domain.select(models.Domain.id).where(models.Domain.name == name)
             .order_by(models.Domain.id).for_update())


def _drop_losing_claims(winner):
    """``winner`` just proved DNS: other accounts' never-verified claims on the name are deleted (their
    inboxes could never send); claims that were verified once are kept as failed (their Sent mail
    stays). Our SES identity flag passes to the winner if a deleted claim held it."""
    Domain = models.Domain
    losers = list(Domain.select().where(Domain.name == winner.name, Domain.id != winner.id,
                                        Domain.status != "verified"))
    dropped = [d for d in losers if d.verified_at is None]
    kept = [d for d in losers if d.verified_at is not None]
    if dropped:
        if any(d.ses_identity_created for d in dropped):
            Domain.update(ses_identity_created=True).where(Domain.id == winner.id).execute()
        Domain.delete().where(Domain.id.in_([d.id for d in dropped])).execute()
    if kept:
        reason = f"{winner.name} was verified by another Inboxlayer account"
        Domain.update(status="failed", failing_since=None, last_error=reason).where(
            Domain.id.in_([d.id for d in kept])).execute()
        for loser in kept:
            if loser.status != "failed":
                _domain_event(loser, "failed", reason)
    for loser in losers:
        log.info("domain %s: claim of user %s %s (verified by user %s)", winner.name, loser.user_id,
                 "dropped" if loser.verified_at is None else "failed", winner.user_id)


def due_domain_ids(now: datetime.datetime | None = None) -> list[int]:
    """Ids of domains due for a check, least recently checked first: pending and failed ones (and
    verified ones failing their re-check) every ``dns.check_interval``, verified ones every
    ``dns.recheck_interval``."""
    dns_settings = settings.current().dns
    now = now or models.utcnow()
    slack = DUE_SLACK * dns_settings.check_interval
    often = now - datetime.timedelta(seconds=dns_settings.check_interval - slack)
    rarely = now - datetime.timedelta(seconds=dns_settings.recheck_interval - slack)
    Domain = models.Domain
    unsettled = (Domain.status != "verified") | Domain.failing_since.is_null(False)
    query = (Domain.select(Domain.id)
             .where(Domain.last_checked_at.is_null()
                    | (unsettled & (Domain.last_checked_at <= often))
                    | (Domain.last_checked_at <= rarely))
             .order_by(Domain.last_checked_at.asc(nulls="first"), Domain.id))
    return [d.id for d in query]


def check_domains() -> int:
    """The periodic pass: expire stale claims, then check every due domain, ``dns.check_concurrency``
    at a time, within ``dns.check_budget`` seconds (never more than 0.8 of ``dns.check_interval``,
    so the pass ends before its cluster lock does). Domains not reached wait for the next pass,
    which starts with them. Returns how many were checked. One domain's error does not stop the others.
    """
    dns_settings = settings.current().dns
    budget = min(dns_settings.check_budget, 0.8 * dns_settings.check_interval)
    deadline = time.monotonic() + budget
    with models.db.connection_context():
        expire_pending()
        ids = due_domain_ids()
    remaining = iter(ids)
    lock = threading.Lock()
    checked = []

    def work():
        while time.monotonic() < deadline:
            with lock:
                domain_id = next(remaining, None)
            if domain_id is None:
                return
            try:
                if check_domain(domain_id, deadline) is not None:
                    checked.append(domain_id)
            except BudgetSpent:
                return
            except Exception:  # the periodic boundary: log and go on with the next domain
                log.exception("domain check failed for domain %s", domain_id)

    workers = [threading.Thread(target=work, name="domain check", daemon=True)
               for _ in range(max(1, min(dns_settings.check_concurrency, len(ids))))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if len(checked) < len(ids):
        log.warning("domain checks: %d of %d due domains checked within the %.0f s budget", len(checked),
                    len(ids), budget)
    return len(checked)
