"""Custom sending domains: the SES identity, the DNS records users publish, and their verification.

A domain becomes ``verified`` when DNS shows the ``_inboxlayer`` TXT token and the three Easy DKIM
CNAMEs and SES does not report DKIM as failed. Missing records keep it ``pending``; a record that
is present with the wrong value makes it ``failed`` with a reason naming the record. SPF and DMARC
are shown as recommendations and never block verification (many domains already have their own).
"""
import datetime
import json
import logging
import secrets
import string

import boto3
import dns.exception
import dns.resolver
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError

import models
import settings

log = logging.getLogger(__name__)

VERIFY_LABEL = "_inboxlayer"
VERIFY_PREFIX = "inboxlayer-verification="
DKIM_TARGET = "dkim.amazonses.com"
SPF_VALUE = "v=spf1 include:amazonses.com ~all"
DNS_TIMEOUT = 3.0  # seconds per lookup, so "Check now" answers within a page load
SES_TIMEOUT = 10  # seconds per SES identity call
# SES DKIM statuses that mean the identity cannot sign (sesv2 DkimAttributes.Status).
SES_DKIM_FAILED = {"FAILED", "TEMPORARY_FAILURE"}
TRANSIENT_DNS_ERRORS = (dns.resolver.NoNameservers, dns.exception.Timeout)


class DomainSetupError(Exception):
    """SES refused or could not be reached while setting up an identity (message is user-facing)."""


# -- SES identity ---------------------------------------------------------------------------------

def ses_client():
    ses = settings.get()["ses"]
    return boto3.client("sesv2", endpoint_url=ses["endpoint_url"] or None, region_name=ses["region"],
                        config=Config(connect_timeout=ses["connect_timeout"], read_timeout=SES_TIMEOUT,
                                      retries={"total_max_attempts": 2, "mode": "standard"}))


def create_identity(name):
    """Create the SES domain identity with Easy DKIM; return its three DKIM tokens.

    Asking for a 2048-bit key (NextSigningKeyLength) still selects Easy DKIM. An identity that
    already exists in SES (left over from a deleted domain) is reused rather than refused.
    """
    client = ses_client()
    try:
        try:
            response = client.create_email_identity(
                EmailIdentity=name, DkimSigningAttributes={"NextSigningKeyLength": "RSA_2048_BIT"})
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
    return tokens


def delete_identity(name):
    """Remove the SES identity; failures are logged, not raised (the domain row is gone anyway)."""
    try:
        ses_client().delete_email_identity(EmailIdentity=name)
    except (ClientError, BotoCoreError) as exc:
        log.warning("could not delete SES identity %s: %s", name, exc)


def ses_dkim_problem(name):
    """A reason string if SES reports DKIM failed for ``name``, else None (unknown counts as fine:
    the stand-in never finishes verification, and real SES re-checks on its own schedule)."""
    try:
        identity = ses_client().get_email_identity(EmailIdentity=name)
    except (ClientError, BotoCoreError) as exc:
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

def make_resolver():
    """dnspython resolver for ``dns.resolver`` = "ip[:port]" (``[v6]:port`` for IPv6); empty = system."""
    configured = settings.get()["dns"]["resolver"].strip()
    if not configured:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        host, port = _split_host_port(configured)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = DNS_TIMEOUT
    resolver.timeout = DNS_TIMEOUT
    return resolver


def _split_host_port(value):
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, 53


def _lookup(resolver, name, rdtype):
    """The record texts at ``name``; [] when the name or type does not exist."""
    try:
        answer = resolver.resolve(name, rdtype, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    if answer.rrset is None:
        return []
    if rdtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset]
    return [r.to_text().rstrip(".").lower() for r in answer.rrset]


def evaluate(domain, resolver):
    """(status, reason) from DNS alone. Raises TRANSIENT_DNS_ERRORS when DNS cannot answer."""
    missing, wrong = [], []
    for record in expected_records(domain):
        if not record["required"]:
            continue
        found = _lookup(resolver, record["name"], record["type"])
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


# -- checks -----------------------------------------------------------------------------------------

def check_domain(domain_id):
    """Check one domain's DNS (and SES's DKIM status) and record the outcome. Returns the Domain,
    or None if it no longer exists. A DNS outage records the error but never changes the status."""
    with models.db.connection_context():
        domain = models.Domain.get_or_none(models.Domain.id == domain_id)
        if domain is None:
            return None
        try:
            status, reason = evaluate(domain, make_resolver())
        except TRANSIENT_DNS_ERRORS as exc:
            status, reason = domain.status, f"DNS lookup failed, will retry: {exc.__class__.__name__}"
        except ValueError as exc:  # a malformed dns.resolver setting: the operator's to fix, not the user's
            log.error("dns.resolver setting is invalid: %s", exc)
            status, reason = domain.status, "DNS lookup failed, will retry: resolver misconfigured"
        else:
            if status == "verified":
                problem = ses_dkim_problem(domain.name)
                if problem:
                    status, reason = "failed", problem
        now = models.utcnow()
        changes = {"status": status, "last_error": reason, "last_checked_at": now}
        if status == "verified" and domain.status != "verified":
            changes["verified_at"] = now
        with models.db.atomic():
            models.Domain.update(**changes).where(models.Domain.id == domain.id).execute()
        if status != domain.status:
            log.info("domain %s: %s -> %s%s", domain.name, domain.status, status, f" ({reason})" if reason else "")
        return models.Domain.get_by_id(domain.id)


def check_pending_domains(older_than=None):
    """Check every pending or failed domain not checked within ``dns.check_interval`` seconds.
    Returns how many were checked. One domain's error does not stop the others."""
    if older_than is None:
        # A little under the interval, so a domain checked on the previous periodic run is due on this one.
        older_than = settings.get()["dns"]["check_interval"] * 0.9
    cutoff = models.utcnow() - datetime.timedelta(seconds=older_than)
    with models.db.connection_context():
        ids = [d.id for d in models.Domain.select(models.Domain.id).where(
            models.Domain.status.in_(("pending", "failed")),
            (models.Domain.last_checked_at.is_null()) | (models.Domain.last_checked_at <= cutoff))]
    checked = 0
    for domain_id in ids:
        try:
            check_domain(domain_id)
            checked += 1
        except Exception:  # the periodic boundary: log and go on with the next domain
            log.exception("domain check failed for domain %s", domain_id)
    return checked
