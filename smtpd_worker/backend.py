"""What an SMTP session needs from the rest of the system, behind one small interface.

The session (session.py) speaks the protocol and nothing else; a backend answers the questions
that need data: who is this, may they send as that address, is there rate and quota left, and
"take this message". ``DbBackend`` answers them with the real models, limits and submit path;
``DiscardBackend`` answers from memory so the protocol can be tested and benchmarked alone.

Contract for every method: refusals raise ``core.errors.SubmitError`` subclasses (the session
replies with their ``smtp_reply``); anything that means "our side is down" raises
``BackendUnavailable`` (the session replies ``451 4.3.0``).
"""
import contextlib
import itertools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from peewee import JOIN

import models
from core import accounts
from core import audit
from core import errors
from core import keys
from core import limits
from core import quota
from core import recipients as recipient_rules
from core import submit
from core.errors import OUTAGES

log = logging.getLogger(__name__)


class BackendUnavailable(Exception):
    """The database, Redis or the blob store did not answer; the client should try again later."""


@dataclass
class Principal:
    """An authenticated SMTP client: the inbox it logged in as and the token (key) it used."""

    address: str
    token_id: int = 0
    user: object = None
    inbox: object = None
    used_today: int = 0  # sends counted today as of the last refresh()
    token: object = None  # the ApiToken row: its scope, expiry, cap and sandbox flag
    key_used_today: int = 0  # this key's own sends today as of the last refresh()
    actor: object = None  # core.audit.Actor: who the audit trail names

    @property
    def account(self):
        """What per-account limits count by: the user's id, or the address when there is no
        user row (DiscardBackend, where each address is its own account)."""
        return self.user.id if self.user is not None else self.address


@dataclass
class Accepted:
    """What end of DATA answers: the OutboundEmail id, and ``replayed`` when the message's
    Idempotency-Key named an earlier send (nothing new was queued)."""

    public_id: str
    replayed: bool = False


_INBOX_WITH_DOMAIN = models.CompiledSelect(lambda address: models.Inbox.select(models.Inbox, models.Domain).join(
    models.Domain, JOIN.LEFT_OUTER).where(models.Inbox.address == address))


class DbBackend:
    """The production backend: models + submission + limits. Each DB lookup scopes its own
    connection (``connection_context``), so an idle session holds none."""

    def __init__(self, config):
        smtp = config["smtp"]
        self.max_auth_failures = smtp["max_auth_failures"]
        self.auth_failure_window = smtp["auth_failure_window"]

    # -- failed-AUTH throttle (per client IP, shared by every node through Redis) -----------------

    def auth_throttled(self, client_ip):
        try:
            return limits.window_count("authfail", client_ip) >= self.max_auth_failures
        except limits.LimiterUnavailable as exc:
            # Fail open: with Redis down nothing can be sent anyway (the rate limit answers 451).
            log.warning("auth throttle unavailable: %s", exc)
            return False

    def record_auth_failure(self, client_ip):
        """Count one failure; True when this client IP is now over the limit."""
        try:
            return limits.count_in_window("authfail", client_ip, self.auth_failure_window) > self.max_auth_failures
        except limits.LimiterUnavailable as exc:
            log.warning("auth throttle unavailable: %s", exc)
            return False

    # -- the questions ---------------------------------------------------------------------------

    def authenticate(self, username, token, client_ip=""):
        """The Principal for a live ``token`` that may send from the inbox ``username``, or None
        (bad credentials); errors.KeyRefused when the key is valid but its scope, permissions or
        expiry refuse this inbox (the reply names the rule; see core/keys.py). Every outcome is
        recorded in the audit trail."""
        try:
            address = models.normalize_address(username)
        except models.AddressError:
            address = None
        try:
            with models.db.connection_context():
                row = accounts.lookup_token(token, client_ip=client_ip, via="smtp")
                inbox = self._inbox(address) if row is not None and address else None
                if row is None:
                    user_id, token_id, prefix = accounts.presented_key(token)
                    actor = audit.Actor("smtp", client_ip, user_id, token_id, prefix)
        except OUTAGES as exc:
            raise BackendUnavailable(str(exc)) from exc
        if row is not None:
            actor = audit.Actor.of_token(row, "smtp", client_ip)
        try:
            if row is None:
                raise errors.KeyRefused("credentials", "")
            if inbox is None or inbox.user_id != row.user_id:
                # Outside the key's account, or no such inbox: for a key scoped to some inboxes the
                # answer is the scope rule either way, so it learns nothing about other inboxes.
                keys.check(row, keys.SEND)
                if row.inbox_ids:
                    raise errors.KeyRefused("inbox_scope", "inbox outside the API key's scope")
                raise errors.KeyRefused("credentials", "")
            keys.check(row, keys.SEND, inbox)
        except errors.KeyRefused as exc:
            audit.record(actor, "auth", "failure", exc.rule, address or "")
            if exc.rule == "credentials":
                return None
            raise
        audit.record(actor, "auth", "success", "", inbox.address)
        return Principal(address=inbox.address, token_id=row.id, user=row.user, inbox=inbox, token=row, actor=actor)

    def refresh(self, principal):
        """Re-check the principal at the start of a transaction (MAIL) and again at the end of
        DATA, before the commit: a token revoked, a plan changed or a domain verified since AUTH
        counts from then on, for a transaction in progress too. None if the token is no longer
        live or its account no longer owns the inbox. It runs for every message, so it is one query for
        the values that can change, updated in place (today's usage included, which the RCPT
        quota check then reads; the reservation at end of DATA is the authoritative check)."""
        try:
            with models.db.connection_context():
                row = models.sender_state(principal.address, principal.token_id)
        except OUTAGES as exc:
            raise BackendUnavailable(str(exc)) from exc
        if row is None:
            return None
        (principal.user.plan, domain_status, principal.used_today, principal.key_used_today,
         principal.inbox.paused_at, principal.inbox.paused_reason) = row
        if principal.inbox.domain_id is not None:
            principal.inbox.domain.status = domain_status
        if keys.is_expired(principal.token):
            audit.record(principal.actor, "send", "refused", "key_expired", principal.address)
            raise errors.KeyExpired()
        return principal

    @staticmethod
    def _inbox(address):
        # The domain is loaded with the inbox so later checks need no connection.
        return _INBOX_WITH_DOMAIN.first(address)

    def authorize_sender(self, principal, address):
        with self._audited(principal, address):
            submit.check_sender(principal.inbox, address)

    def check_rate(self, principal):
        with self._audited(principal, principal.address):
            try:
                quota.check_rate(principal.user)
            except OUTAGES as exc:
                raise BackendUnavailable(str(exc)) from exc

    def check_recipient_quota(self, principal, count):
        with self._audited(principal, principal.address):
            keys.check_key_limit(principal.token, count, used=principal.key_used_today)
            if not principal.token.sandbox:  # a sandbox key's messages are not charged
                quota.check_quota(principal.user, count, used=principal.used_today)

    @staticmethod
    @contextlib.contextmanager
    def _audited(principal, what):
        """Record a refusal of a send (MAIL, RCPT) in the audit trail, then let it through."""
        try:
            yield
        except errors.SubmitError as exc:
            audit.record(principal.actor, "send", "refused", exc.code, what)
            raise

    def check_not_paused(self, principal):
        """After refresh() (MAIL asks both in a row): its read of the inbox's pause answers, no query."""
        with self._audited(principal, principal.address):
            recipient_rules.check_paused(principal.inbox, as_read=True)

    def check_recipient(self, principal, address, first_contacts):
        """Recipient safety (core/recipients.py): raise the refusal, or return whether ``address``
        would be a first contact of the inbox."""
        with self._audited(principal, address):
            try:
                with models.db.connection_context():
                    return recipient_rules.check_recipient(principal.user, principal.inbox, address, first_contacts,
                                                           sandbox=bool(principal.token and principal.token.sandbox))
            except OUTAGES as exc:
                raise BackendUnavailable(str(exc)) from exc

    def submit(self, principal, mail_from, recipients, spool, refused=(), all_known=False):
        """The Accepted (queued id, and whether an Idempotency-Key named an earlier send).
        ``all_known``: RCPT found no first contact among ``recipients`` (see core.submit.submit)."""
        with self._audited(principal, principal.address):
            try:
                outbound = submit.submit(principal.user, principal.inbox, mail_from, recipients, spool, via="smtp",
                                         refused=refused, key=principal.token, all_known=all_known)
            except OUTAGES as exc:
                raise BackendUnavailable(str(exc)) from exc
        replayed = getattr(outbound, "replayed", False)
        audit.record(principal.actor, "send", "accepted", "replayed" if replayed else "",
                     f"{outbound.public_id} from {principal.address}")
        return Accepted(outbound.public_id, replayed)


class DiscardBackend:
    """Accepts ``users`` (address -> password) and throws messages away, or copies them into
    ``capture_dir`` as ``<id>.eml`` so tests can read what the session stored. In memory, one
    process: for protocol tests and the benchmark, never for production."""

    def __init__(self, users, capture_dir=None, max_auth_failures=10, auth_failure_window=600):
        self.users = {k.strip().lower(): v for k, v in users.items()}
        self.capture_dir = Path(capture_dir) if capture_dir else None
        self.max_auth_failures = max_auth_failures
        self.auth_failure_window = auth_failure_window
        self._failures = {}  # client ip -> (window start, count)
        self._ids = itertools.count(1)

    def auth_throttled(self, client_ip):
        start, count = self._failures.get(client_ip, (0.0, 0))
        return time.monotonic() - start < self.auth_failure_window and count >= self.max_auth_failures

    def record_auth_failure(self, client_ip):
        now = time.monotonic()
        start, count = self._failures.get(client_ip, (now, 0))
        if now - start >= self.auth_failure_window:
            start, count = now, 0
        self._failures[client_ip] = (start, count + 1)
        return count + 1 > self.max_auth_failures

    def authenticate(self, username, password, client_ip=""):
        address = username.strip().lower()
        if password is None or self.users.get(address) != password:
            return None
        return Principal(address=address)

    def refresh(self, principal):
        """Like DbBackend.refresh: None once the user is gone (``users`` is the live list)."""
        return principal if principal.address in self.users else None

    def authorize_sender(self, principal, address):
        if not address or models.sender_key(address) != principal.address:
            raise errors.SenderNotAllowed()

    def check_rate(self, principal):
        pass

    def check_recipient_quota(self, principal, count):
        pass

    def check_not_paused(self, principal):
        pass

    def check_recipient(self, principal, address, first_contacts):
        return False

    def submit(self, principal, mail_from, recipients, spool, refused=(), all_known=False):
        public_id = f"ob_discard{next(self._ids):06d}"
        if self.capture_dir is not None:
            spool.seek(0)
            with open(self.capture_dir / f"{public_id}.eml", "wb") as out:
                shutil.copyfileobj(spool, out)
        return Accepted(public_id)
