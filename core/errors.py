"""Every refusal and outage the front-ends translate: one family, one ``OUTAGES`` tuple.

``SubmitError`` subclasses carry both renderings of a refusal: the SMTP reply and the HTTP
status + code. ``OUTAGES`` is what "our side is down" means everywhere (SMTP answers 451, the
web and API answer 503): a dependency failed, not a bug and not the client's fault.
"""
import redis
from peewee import PeeweeException
from playhouse.pool import MaxConnectionsExceeded


class BlobError(Exception):
    """The blob store is unavailable or the blob is missing."""


class LimiterUnavailable(Exception):
    """Redis could not be reached; callers answer 4xx (try again later)."""


class QueueUnavailable(Exception):
    """Redis could not be reached."""


# A dependency being down is "try again shortly" (SMTP 451, HTTP 503), not our bug (500).
OUTAGES = (PeeweeException, MaxConnectionsExceeded, redis.RedisError, OSError, BlobError, LimiterUnavailable,
           QueueUnavailable)



class SubmitError(Exception):
    """A refusal with the SMTP reply and HTTP status that describe it."""

    smtp_reply = "451 4.3.0 Temporary server error, try again later"
    http_status = 503
    code = "temporary_failure"

    def __init__(self, message=None, smtp_reply=None, retry_after=None):
        super().__init__(message or self.smtp_reply[10:])
        if smtp_reply:
            self.smtp_reply = smtp_reply
        self.retry_after = retry_after


class TemporaryFailure(SubmitError):
    pass


class QuotaExceeded(SubmitError):
    http_status = 429
    code = "quota_exceeded"

    def __init__(self, used, limit, retry_after):
        """``retry_after``: seconds until the quota resets (core.quota.seconds_to_reset)."""
        text = f"Daily sending quota exceeded ({used}/{limit}, resets 00:00 UTC)"
        super().__init__(text, f"550 5.4.5 {text}", retry_after=retry_after)
        self.used, self.limit = used, limit


class RateLimited(SubmitError):
    smtp_reply = "451 4.7.1 Sending rate limit exceeded, try again later"
    http_status = 429
    code = "rate_limited"


class SenderNotAllowed(SubmitError):
    smtp_reply = "550 5.7.1 Sender address not owned by authenticated inbox"
    http_status = 403
    code = "sender_not_allowed"


class DomainNotVerified(SubmitError):
    http_status = 403
    code = "domain_not_verified"

    def __init__(self, reason):
        super().__init__(reason, f"550 5.7.1 {reason}")


class BadMessage(SubmitError):
    """The message itself is refused; ``status`` is the SMTP code and enhanced code."""

    smtp_reply = "554 5.6.0 Message is not a valid RFC 5322 message"
    http_status = 422
    code = "invalid_message"

    def __init__(self, message, status="554 5.6.0"):
        super().__init__(message, f"{status} {message}")


class TooManyListedRecipients(BadMessage):
    code = "too_many_recipients"

    def __init__(self, limit):
        super().__init__(f"Too many addresses in To: and Cc: (at most {limit}; use Bcc for more)",
                         "554 5.5.3")


class IdempotencyConflict(SubmitError):
    smtp_reply = "554 5.6.0 This Idempotency-Key was used with a different message"
    http_status = 409
    code = "idempotency_conflict"



# -- recipient safety (core/recipients.py) ------------------------------------------------------

class RecipientRefused(SubmitError):
    """One or more recipients refused; ``refused`` is [(address, reason)]. SMTP refuses one
    recipient per RCPT (its own reply); REST names each refused recipient in one 422."""

    http_status = 422

    def __init__(self, refused, smtp_reply, summary):
        self.refused = list(refused)
        text = summary + ": " + "; ".join(f"{a} ({r})" if r else a for a, r in self.refused)
        super().__init__(text, smtp_reply)


class RecipientSuppressed(RecipientRefused):
    code = "recipient_suppressed"

    def __init__(self, refused):
        address, reason = refused[0]
        super().__init__(refused, f"550 5.1.1 <{address}>: on this account's suppression list ({reason})",
                         "Recipient(s) on this account's suppression list")


class RecipientNotAllowed(RecipientRefused):
    code = "recipient_not_allowed"

    def __init__(self, refused):
        super().__init__([(a, None) for a, _ in refused],
                         f"550 5.7.1 <{refused[0][0]}>: not allowed by this inbox's recipient policy",
                         "Recipient(s) not allowed by this inbox's recipient policy")


class NewRecipientLimit(SubmitError):
    http_status = 429
    code = "new_recipient_limit"

    def __init__(self, used, limit, retry_after):
        text = f"new-recipient limit reached ({used}/{limit} today, resets 00:00 UTC)"
        super().__init__(text, f"451 4.7.1 {text}", retry_after=retry_after)
        self.used, self.limit = used, limit


class InboxPaused(SubmitError):
    http_status = 403
    code = "inbox_paused"

    def __init__(self, reason):
        text = f"inbox paused: {reason}; resume it in the dashboard"
        super().__init__(text, f"550 5.7.1 {text}")


class KeyRefused(SubmitError):
    """The API key may not do this (core/keys.py decides). ``rule`` names the rule (``expired``,
    ``permission``, ``inbox_scope``, ``wider_key``); str() is the human reason. Over SMTP it is the
    AUTH refusal (``535 5.7.8 ... : <reason>``); over REST a 403 ``key_scope``."""

    http_status = 403
    code = "key_scope"

    def __init__(self, rule, reason):
        super().__init__(reason, f"535 5.7.8 Authentication credentials invalid: {reason}")
        self.rule = rule


class KeyExpired(KeyRefused):
    """The key's ``expires_at`` has passed: REST 401 ``key_expired``, SMTP AUTH 535 naming it."""

    http_status = 401
    code = "key_expired"

    def __init__(self):
        super().__init__("expired", "API key expired")


class KeyLimitExceeded(SubmitError):
    """The key's own daily cap (under the account quota) is spent; worded like QuotaExceeded."""

    http_status = 429
    code = "key_limit_exceeded"

    def __init__(self, used, limit, retry_after):
        text = f"Daily sending limit of this API key exceeded (key limit {used}/{limit}, resets 00:00 UTC)"
        super().__init__(text, f"550 5.4.5 {text}", retry_after=retry_after)
        self.used, self.limit = used, limit


class SimulatorMixed(SubmitError):
    """Simulator recipients (core/simulator.py) and real ones in one message."""

    smtp_reply = "550 5.5.4 Simulator recipients cannot be mixed with other recipients in one message"
    http_status = 422
    code = "simulator_mixed"
