"""May this inbox send to this recipient now? The one home of recipient safety (issue 14).

Four rules, asked the same way by SMTP (per ``RCPT TO``) and REST (per send), refusals rendered
from core/errors.py:

- **Pause.** An inbox whose hard bounces or complaints in the last 24 h pass its plan's thresholds
  is paused (``note_ses_event``) until its owner resumes it: every send is refused (InboxPaused).
- **Suppression** (per account): an address that hard-bounced, complained, or was added by hand is
  refused (RecipientSuppressed) with the reason recorded. Addresses compare by ``address_key``:
  the domain case-insensitively, the local part without its ``+tag`` (so ``bob+1@x.com`` does not
  escape ``bob@x.com``) and without case (``Bob@X.com`` is bob too: every real mailbox provider
  treats it so, and for a list whose job is to stop mail, refusing a case variant is the safe
  side); nothing else is folded (dots stay: ``b.ob`` is not ``bob``).
- **Policy** (per inbox): blocklist and allowlist entries ``bob@x.com``, ``@x.com`` (that domain)
  and ``*.x.com`` (its subdomains, not x.com itself). A blocked recipient is refused; with an
  allowlist, so is every recipient it does not list. The blocklist wins (RecipientNotAllowed).
- **First-contact cap** (per inbox): at most ``new_recipients_per_day`` (the inbox's own, else its
  plan's; 0 = none) recipients it has never mailed, per UTC day (NewRecipientLimit).

Counting the cap: a first contact is counted when its message COMMITS (``admit``, inside the
transaction that stores the message), never at RCPT. ``admit`` first locks the inbox's counter row
for the day (a conditional UPDATE), so every committing send of one inbox is serialised there —
across SMTP nodes and REST alike — then records the recipients it did not know and adds them to
the counter only if the total stays within the cap; otherwise the whole transaction rolls back.
So an RCPT accepted for a message that never commits (RSET, a dropped connection, a crash)
consumes nothing. The RCPT/REST checks before that (``check_recipient``, ``check_send``) only
read: they refuse early when the cap is already reached, and ``admit`` is the authority (SMTP
then answers the end of DATA with the same 451, so the client retries and the unknown recipient
is refused at RCPT while the others go).

Every function expects a connection scoped by the caller; the writers own their ``db.atomic()``.
"""
import datetime
import json
import logging

from peewee import IntegrityError

import models
from core import event_vocabulary
from core import events
from core import outbound
from core import quota
from core import simulator
from core.errors import InboxPaused
from core.errors import NewRecipientLimit
from core.errors import RecipientNotAllowed
from core.errors import RecipientSuppressed

log = logging.getLogger(__name__)

WINDOW = datetime.timedelta(hours=24)  # the auto-pause looks this far back
MAX_ADDRESS = 320  # characters of an address or policy entry (the columns' width)
MAX_RULES = 1000  # entries per list (allow, block) of one inbox
MAX_BATCH = 1000  # suppressions added in one request
MAX_REASON = 500  # characters of a suppression's reason
SOURCES = ("bounce", "complaint", "manual")
KINDS = ("allow", "block")
BOUNCE_EVENT = outbound.vocabulary.ses_event_type("Bounce")  # the OutboundEvent types the pause counts
COMPLAINT_EVENT = outbound.vocabulary.ses_event_type("Complaint")


class InvalidEntry(ValueError):
    """A refused suppression or policy entry: ``field`` names where, str() says why."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field


# -- addresses and patterns -------------------------------------------------------------------

def address_key(address: str) -> str:
    """The comparable form of a recipient: ``local@domain`` lower-case, ``+tag`` dropped."""
    local, _, domain = address.strip().rpartition("@")
    return f"{local.lower().split('+', 1)[0]}@{domain.lower().rstrip('.')}"


def _has_control(text):
    return any(ord(c) < 32 or ord(c) == 127 or 0x80 <= ord(c) < 0xA0 for c in text)


def clean_address(value, field="address") -> str:
    """A recipient address as given by a user (suppression list), checked; InvalidEntry if not."""
    if not isinstance(value, str):
        raise InvalidEntry(field, "must be a string")
    if _has_control(value):
        raise InvalidEntry(field, "must not contain control characters")
    value = value.strip()
    if len(value) > MAX_ADDRESS:
        raise InvalidEntry(field, f"must be at most {MAX_ADDRESS} characters")
    if value.count("@") != 1 or any(c.isspace() for c in value) or "<" in value or ">" in value:
        raise InvalidEntry(field, f"{value[:100]!r} is not an email address (local@domain)")
    local, domain = value.split("@")
    if not local or len(local) > 64:
        raise InvalidEntry(field, f"{value[:100]!r} needs a local part of 1 to 64 characters")
    try:
        domain = models.normalize_domain(domain)
    except models.AddressError as exc:
        raise InvalidEntry(field, str(exc)) from None
    return f"{local}@{domain}"


def clean_pattern(value, field) -> str:
    """A policy entry: ``bob@x.com``, ``@x.com`` or ``*.x.com``, normalised; InvalidEntry if not."""
    if not isinstance(value, str):
        raise InvalidEntry(field, "must be a string")
    if _has_control(value):
        raise InvalidEntry(field, "must not contain control characters")
    value = value.strip()
    if value.startswith("*."):
        return "*." + _domain(value[2:], value, field)
    if value.startswith("@"):
        return "@" + _domain(value[1:], value, field)
    if "*" in value:
        raise InvalidEntry(field, f"{value[:100]!r}: a wildcard is only allowed as '*.domain'")
    return address_key(clean_address(value, field))


def _domain(name, value, field):
    if "@" in name or "*" in name:
        raise InvalidEntry(field, f"{value[:100]!r} is not 'bob@x.com', '@x.com' or '*.x.com'")
    try:
        return models.normalize_domain(name)
    except models.AddressError as exc:
        raise InvalidEntry(field, f"{value[:100]!r}: {exc}") from None


def matches(pattern: str, key: str) -> bool:
    """Does policy entry ``pattern`` cover the recipient whose address_key is ``key``?"""
    domain = key.rpartition("@")[2]
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    if pattern.startswith("@"):
        return domain == pattern[1:]
    return key == pattern


# -- reading the rules ------------------------------------------------------------------------

def cap_of(user, inbox) -> int:
    """The inbox's first-contact cap per UTC day (0 = none)."""
    own = (models.Inbox.select(models.Inbox.new_recipients_per_day).where(models.Inbox.id == inbox.id)
           .scalar())  # read fresh: an SMTP session holds its inbox row from AUTH on
    return own if own is not None else quota.plan_of(user).new_recipients_per_day


def suppressed(user, keys) -> dict:
    """{address_key: reason} of ``keys`` on ``user``'s suppression list."""
    s = models.Suppression
    return {row.address: row.reason for row in
            s.select(s.address, s.reason).where(s.user == user, s.address.in_(list(keys)))}


def policy_of(inbox) -> dict:
    """{"allow": [patterns], "block": [patterns]}, each in the order they were added."""
    r = models.RecipientRule
    policy = {"allow": [], "block": []}
    for rule in r.select(r.kind, r.pattern).where(r.inbox == inbox).order_by(r.id):
        policy[rule.kind].append(rule.pattern)
    return policy


def allowed(policy, key) -> bool:
    if any(matches(p, key) for p in policy["block"]):
        return False
    return not policy["allow"] or any(matches(p, key) for p in policy["allow"])


def known(inbox, keys) -> set:
    k = models.KnownRecipient
    return {row.address for row in k.select(k.address).where(k.inbox == inbox, k.address.in_(list(keys)))}


def new_today(inbox) -> int:
    row = models.NewRecipientUsage.get_or_none(models.NewRecipientUsage.inbox == inbox,
                                               models.NewRecipientUsage.day == models.today())
    return row.count if row else 0


def paused_reason(inbox_id):
    """The reason the inbox is paused, read fresh (it changes under a session), or None."""
    row = (models.Inbox.select(models.Inbox.paused_at, models.Inbox.paused_reason)
           .where(models.Inbox.id == inbox_id).first())
    if row is None or row.paused_at is None:
        return None
    return row.paused_reason or "paused"


def check_paused(inbox, as_read=False) -> None:
    """Raise InboxPaused if the inbox is paused: read fresh, or with ``as_read`` from the inbox's
    paused_at/paused_reason as the caller has just read them (SMTP's per-message refresh)."""
    if as_read:
        reason = None if inbox.paused_at is None else (inbox.paused_reason or "paused")
    else:
        reason = paused_reason(inbox.id)
    if reason is not None:
        raise InboxPaused(reason)


# -- the checks the front-ends call -----------------------------------------------------------

# Everything RCPT needs in one round trip (SMTP asks it for every recipient).
_RECIPIENT_STATE = models.HotStatement("inboxlayer_recipient_state", """
SELECT i.paused_at, i.paused_reason, i.new_recipients_per_day,
       (SELECT s.reason FROM suppression s WHERE s.user_id = i.user_id AND s.address = {p}),
       EXISTS (SELECT 1 FROM recipient_rule r WHERE r.inbox_id = i.id),
       EXISTS (SELECT 1 FROM known_recipient k WHERE k.inbox_id = i.id AND k.address = {p}),
       COALESCE((SELECT u.count FROM new_recipient_usage u WHERE u.inbox_id = i.id AND u.day = {p}), 0)
FROM inbox i WHERE i.id = {p}
""", ("text", "text", "date", "bigint"))


def counted(addresses, sandbox=False) -> list:
    """The recipients that count as contacts of the inbox (the known recipients, the first-contact
    cap): none of a sandbox key's message, which reaches nobody, and never a mailbox-simulator
    address (core/simulator.py). Suppression and policy still apply to every recipient."""
    if sandbox:
        return []
    return [a for a in addresses if not simulator.is_simulator(a)]


def check_recipient(user, inbox, address, pending_new=0, sandbox=False) -> bool:
    """SMTP ``RCPT TO``: raise the refusal for ``address``, or return whether it is a first contact.
    ``pending_new``: first contacts already accepted in this transaction (they count toward the cap
    as the message would commit them); ``sandbox``: the client uses a sandbox key (see ``counted``).
    One query, two when the inbox has a policy."""
    key = address_key(address)
    row = _RECIPIENT_STATE.run((key, key, models.today().isoformat(), inbox.id)).fetchone()
    if row is None:  # the inbox is gone; the end of DATA refuses the message
        return False
    paused_at, paused, own_cap, suppression, has_rules, is_known, used = row
    if paused_at is not None:
        raise InboxPaused(paused or "paused")
    if suppression is not None:
        raise RecipientSuppressed([(address, suppression)])
    if has_rules and not allowed(policy_of(inbox), key):
        raise RecipientNotAllowed([(address, None)])
    if is_known or not counted([address], sandbox):
        return False
    cap = own_cap if own_cap is not None else quota.plan_of(user).new_recipients_per_day
    if cap and used + pending_new + 1 > cap:
        raise NewRecipientLimit(min(used + pending_new, cap), cap, quota.seconds_to_reset())
    return True


def check_send(user, inbox, addresses, sandbox=False) -> None:
    """REST: raise one refusal naming every refused recipient of the message (paused first, then
    suppressed, then not allowed, then the first-contact cap; see ``counted`` for ``sandbox``);
    None when all may be sent to."""
    check_paused(inbox)
    keys = {a: address_key(a) for a in addresses}
    reasons = suppressed(user, set(keys.values()))
    refused = [(a, reasons[k]) for a, k in keys.items() if k in reasons]
    if refused:
        raise RecipientSuppressed(refused)
    policy = policy_of(inbox)
    refused = [(a, None) for a, k in keys.items() if not allowed(policy, k)]
    if refused:
        raise RecipientNotAllowed(refused)
    cap = cap_of(user, inbox)
    if cap:
        contacts = {keys[a] for a in counted(addresses, sandbox)}
        fresh = contacts - known(inbox, contacts) if contacts else set()
        used = new_today(inbox)
        if fresh and used + len(fresh) > cap:
            raise NewRecipientLimit(min(used, cap), cap, quota.seconds_to_reset())


def unknown_recipients(inbox, addresses) -> list:
    """At commit, before any lock: raise InboxPaused, else the address keys of ``addresses`` the
    inbox has not mailed yet (sorted). A known recipient stays known, so an empty answer holds
    without a lock and the message needs no first-contact accounting (``admit``). One query."""
    keys = sorted({address_key(a) for a in addresses})
    p = models.db.obj.param
    sql = f"SELECT 'paused', i.paused_reason FROM inbox i WHERE i.id = {p} AND i.paused_at IS NOT NULL"
    if keys:
        sql += (f" UNION ALL SELECT 'known', k.address FROM known_recipient k "
                f"WHERE k.inbox_id = {p} AND k.address IN ({', '.join([p] * len(keys))})")
    rows = models.db.execute_sql(sql, (inbox.id, inbox.id, *keys) if keys else (inbox.id,)).fetchall()
    for kind, text in rows:
        if kind == "paused":
            raise InboxPaused(text or "paused")
    return sorted(set(keys) - {text for _, text in rows})


def admit(user, inbox, addresses) -> int:
    """Inside the transaction that stores a message with first contacts (``unknown_recipients``
    found some): refuse if the inbox is paused, record the recipients it did not know and count
    them against today's cap (see the module docstring). Raises InboxPaused / NewRecipientLimit
    (the caller's transaction then rolls back). Returns the number of first contacts recorded."""
    keys = sorted({address_key(a) for a in addresses})
    u = models.NewRecipientUsage
    day, now = models.today(), models.utcnow()
    u.insert(inbox=inbox.id, day=day, count=0).on_conflict_ignore().execute()
    # The lock: a no-op UPDATE of the day's counter row, held to the end of the transaction (Postgres
    # row lock; SQLite takes the database write lock). Every committing first contact of the inbox
    # waits here, so the recipients read as unknown below stay unknown until this one commits.
    u.update(count=u.count).where(u.inbox == inbox.id, u.day == day).execute()
    check_paused(inbox)
    fresh = sorted(set(keys) - known(inbox, keys))
    if not fresh:
        return 0
    cap = cap_of(user, inbox)
    if cap:
        updated = (u.update(count=u.count + len(fresh))
                   .where(u.inbox == inbox.id, u.day == day, u.count + len(fresh) <= cap).execute())
        if not updated:
            raise NewRecipientLimit(min(new_today(inbox), cap), cap, quota.seconds_to_reset())
    else:
        u.update(count=u.count + len(fresh)).where(u.inbox == inbox.id, u.day == day).execute()
    models.KnownRecipient.insert_many([{"inbox": inbox.id, "address": k, "first_at": now} for k in fresh]) \
        .on_conflict_ignore().execute()
    return len(fresh)


def refused_at_rcpt(events) -> list:
    """[{"address", "reason"}] of the recipients refused at SMTP RCPT for a message, from its
    ``queued`` OutboundEvent (core/submit.py records them there)."""
    for event in events:
        if event.type == "queued":
            try:
                refused = json.loads(event.detail or "{}").get("refused")
            except (ValueError, AttributeError):
                return []
            return refused if isinstance(refused, list) else []
    return []


def refused_for_message(message_id) -> list:
    """The same list for a stored Sent copy: the refusals of the OutboundEmail that sent it (the
    copy's bytes stay exactly what was relayed; the refusals are told beside them)."""
    queued = (models.OutboundEvent.select().join(models.OutboundEmail)
              .where(models.OutboundEmail.message == message_id, models.OutboundEvent.type == "queued").first())
    return refused_at_rcpt([queued] if queued is not None else [])


# -- the suppression list ---------------------------------------------------------------------

def suppression_json(row) -> dict:
    return {"address": row.original, "source": row.source, "reason": row.reason,
            "created_at": row.created_at.replace(microsecond=0).isoformat() + "Z"}


def list_suppressions(user):
    s = models.Suppression
    return s.select().where(s.user == user)


def add_suppressions(user, addresses, reason=None, source="manual") -> list:
    """Suppress each of ``addresses`` for ``user`` (validated all first: InvalidEntry naming the
    first bad one, nothing saved). An address already listed keeps its first reason. Returns the
    rows, existing or new, in the order given."""
    if reason is not None:
        if not isinstance(reason, str) or _has_control(reason) or len(reason) > MAX_REASON:
            raise InvalidEntry("reason", f"must be text of at most {MAX_REASON} characters, no control characters")
    if len(addresses) > MAX_BATCH:
        raise InvalidEntry("addresses", f"at most {MAX_BATCH} addresses per request ({len(addresses)} given)")
    cleaned = [clean_address(a, f"addresses[{i}]" if len(addresses) > 1 else "address")
               for i, a in enumerate(addresses)]
    reason = reason or f"added by hand {models.today().isoformat()}"
    now = models.utcnow()
    with models.db.atomic():
        models.Suppression.insert_many(
            [{"user": user.id, "address": address_key(a), "original": a, "source": source, "reason": reason,
              "created_at": now} for a in cleaned]).on_conflict_ignore().execute()
        found = {row.address: row for row in list_suppressions(user).where(
            models.Suppression.address.in_([address_key(a) for a in cleaned]))}
    return [found[address_key(a)] for a in cleaned]


def remove_suppression(user, address) -> bool:
    """Take ``address`` (any variant of it: Bob@X.com, bob+1@x.com) off the list. True if it was on."""
    try:
        key = address_key(clean_address(address))
    except InvalidEntry:
        return False
    with models.db.atomic():
        return models.Suppression.delete().where(models.Suppression.user == user,
                                                 models.Suppression.address == key).execute() > 0


# -- the policy ----------------------------------------------------------------------------

def set_policy(inbox, allow, block, cap="keep") -> dict:
    """Replace the inbox's allowlist and blocklist (and its own first-contact cap unless ``cap`` is
    "keep"; None = the plan's). All entries are checked first (InvalidEntry naming the field, e.g.
    ``allow[3]``), then everything is written in one transaction: nothing half-saved."""
    lists = {}
    for kind, entries in (("allow", allow), ("block", block)):
        if not isinstance(entries, list):
            raise InvalidEntry(kind, "must be a list of 'bob@x.com', '@x.com' or '*.x.com'")
        if len(entries) > MAX_RULES:
            raise InvalidEntry(kind, f"at most {MAX_RULES} entries ({len(entries)} given)")
        lists[kind] = list(dict.fromkeys(clean_pattern(e, f"{kind}[{i}]") for i, e in enumerate(entries)))
    if cap != "keep" and cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)
                                              or not 0 <= cap <= 1_000_000):
        raise InvalidEntry("new_recipients_per_day", "must be null or a whole number from 0 to 1000000")
    now = models.utcnow()
    r = models.RecipientRule
    with models.db.atomic():
        r.delete().where(r.inbox == inbox).execute()
        rows = [{"inbox": inbox.id, "kind": kind, "pattern": p, "created_at": now}
                for kind in KINDS for p in lists[kind]]
        for start in range(0, len(rows), 500):
            r.insert_many(rows[start:start + 500]).execute()
        if cap != "keep":
            models.Inbox.update(new_recipients_per_day=cap).where(models.Inbox.id == inbox.id).execute()
            inbox.new_recipients_per_day = cap
    return lists


# -- pause ------------------------------------------------------------------------------------

def pause(inbox_id, reason) -> bool:
    """Pause the inbox (if it is not already). True when this call paused it."""
    i = models.Inbox
    with models.db.atomic():
        now = models.utcnow()
        paused = i.update(paused_at=now, paused_reason=reason).where(
            i.id == inbox_id, i.paused_at.is_null()).execute() == 1
        if paused:  # the event is written with the pause (core/events.py)
            inbox = i.get_by_id(inbox_id)
            events.record(event_vocabulary.INBOX_PAUSED, inbox.user_id,
                          {"inbox": inbox.address, "paused": True, "paused_reason": reason,
                           "paused_at": events.iso(now)}, inbox_id=inbox_id)
        return paused


def resume(inbox) -> bool:
    """Unpause; the auto-pause then counts only bounces and complaints after now. True if it was paused."""
    i = models.Inbox
    with models.db.atomic():
        done = i.update(paused_at=None, paused_reason=None, resumed_at=models.utcnow()).where(
            i.id == inbox.id, i.paused_at.is_null(False)).execute() == 1
    inbox.paused_at = inbox.paused_reason = None
    return done


def health(inbox_id, now=None) -> dict:
    """The inbox's last 24 h (since its last resume, if later): recipients sent to, hard-bounced
    recipients, complaining recipients."""
    now = now or models.utcnow()
    inbox = models.Inbox.get_by_id(inbox_id)
    since = max(now - WINDOW, inbox.resumed_at) if inbox.resumed_at else now - WINDOW
    e, ev = models.OutboundEmail, models.OutboundEvent
    sends = 0
    for (recipients,) in e.select(e.recipients).where(e.inbox == inbox_id, e.created_at >= now - WINDOW).tuples():
        try:
            sends += len(json.loads(recipients))
        except ValueError:
            sends += 1
    hard = complaints = 0
    for kind, detail in (ev.select(ev.type, ev.detail).join(e).where(
            e.inbox == inbox_id, ev.occurred_at >= since, ev.type.in_((BOUNCE_EVENT, COMPLAINT_EVENT))).tuples()):
        try:
            detail = json.loads(detail)
        except ValueError:
            continue
        if detail.get("simulated"):  # the mailbox simulator (core/simulator.py) says nothing of the inbox
            continue
        if kind == BOUNCE_EVENT:
            bounce = detail.get("bounce") or {}
            if bounce.get("bounceType") == "Permanent":
                hard += max(1, len(bounce.get("bouncedRecipients") or []))
        else:
            complaints += max(1, len((detail.get("complaint") or {}).get("complainedRecipients") or []))
    return {"sends": sends, "hard_bounces": hard, "complaints": complaints}


def pause_reason_for(numbers, plan):
    """The reason to pause for, or None, from ``health`` numbers and the plan's thresholds."""
    if plan.pause_complaints and numbers["complaints"] >= plan.pause_complaints:
        return f"{numbers['complaints']} complaints in the last 24 h"
    hard, sends = numbers["hard_bounces"], max(numbers["sends"], 1)
    percent = round(100 * hard / sends)
    if plan.pause_hard_bounces and hard >= plan.pause_hard_bounces and 100 * hard >= plan.pause_bounce_percent * sends:
        return f"{hard} hard bounces in the last 24 h ({percent} %)"
    return None


# -- SES events in ----------------------------------------------------------------------------

def note_ses_event(kind, event, ses_message_id, public_id) -> None:
    """After a Bounce/Complaint was recorded (core.ses_events.apply): suppress each permanently
    bounced or complaining recipient on the sending account, with the event as the reason, then
    pause the inbox if it passed its plan's thresholds."""
    if kind not in ("Bounce", "Complaint"):
        return
    e = models.OutboundEmail
    row = e.get_or_none(e.ses_message_id == ses_message_id) if ses_message_id else None
    if row is None and public_id:
        row = e.get_or_none(e.public_id == public_id)
    if row is None:
        return
    day = _event_day(event, kind)
    if kind == "Bounce":
        bounce = event.get("bounce") or {}
        if bounce.get("bounceType") != "Permanent":
            return
        for rcpt in bounce.get("bouncedRecipients") or []:
            if isinstance(rcpt, dict):
                _auto_suppress(row.user, rcpt.get("emailAddress"), "bounce",
                               f"hard bounce {day}: {_diagnostic(rcpt)}".rstrip(": "))
    else:
        complaint = event.get("complaint") or {}
        feedback = complaint.get("complaintFeedbackType") or "spam report"
        for rcpt in complaint.get("complainedRecipients") or []:
            if isinstance(rcpt, dict):
                _auto_suppress(row.user, rcpt.get("emailAddress"), "complaint", f"complaint {day}: {feedback}")
    user = models.User.get_by_id(row.user_id)
    reason = pause_reason_for(health(row.inbox_id), quota.plan_of(user))
    if reason and pause(row.inbox_id, reason):
        log.warning("inbox %s paused: %s", row.inbox_id, reason)


def _event_day(event, kind):
    stamp = (event.get(kind[0].lower() + kind[1:]) or {}).get("timestamp")
    if isinstance(stamp, str) and len(stamp) >= 10 and stamp[4] == "-":
        return stamp[:10]
    return models.today().isoformat()


def _diagnostic(rcpt):
    """``smtp; 550 5.1.1 <bob@x.com>: user unknown`` -> ``550 5.1.1 user unknown``."""
    text = str(rcpt.get("diagnosticCode") or rcpt.get("status") or "")
    if ";" in text[:10]:
        text = text.split(";", 1)[1]
    text = text.strip()
    address = rcpt.get("emailAddress")
    if isinstance(address, str):
        text = text.replace(f"<{address}>: ", "").replace(f"<{address}> ", "").replace(f"{address}: ", "")
    return "".join(c for c in text if not _has_control(c))[:300]


def _auto_suppress(user_id, address, source, reason):
    if not isinstance(address, str):
        return
    try:
        address = clean_address(address)
    except InvalidEntry:
        log.warning("SES reported an unusable address %.100r; not suppressed", address)
        return
    try:
        with models.db.atomic():
            models.Suppression.insert(user=user_id, address=address_key(address), original=address, source=source,
                                      reason=reason[:MAX_REASON]).on_conflict_ignore().execute()
    except IntegrityError:
        pass
