"""An account's sending allowance: its plan, the send rate, today's quota and when it resets.

Shared by SMTP (per command), REST (per request) and the dashboard's usage bars; the daily
count itself is reserved atomically with the submission (models.record_submission).
"""
import datetime

import models
import settings
from core import limits
from core import metrics
from core.errors import QuotaExceeded
from core.errors import RateLimited
from core.errors import TemporaryFailure


def plan_of(user: models.User) -> settings.Plan:
    """The limits of ``user``'s plan (an unknown plan gets ``server.default_plan``'s)."""
    return settings.current().plan(user.plan)


def next_reset(now: datetime.datetime | None = None) -> datetime.datetime:
    """When the daily quota starts over: the next 00:00 UTC (naive UTC, as models.utcnow)."""
    now = now or models.utcnow()
    return datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time())


def seconds_to_reset(now: datetime.datetime | None = None) -> int:
    """Whole seconds until next_reset, rounded up: a client that waits this long finds the quota reset."""
    now = now or models.utcnow()
    return int((next_reset(now) - now).total_seconds()) + 1


def exceeded(used: int, limit: int) -> QuotaExceeded:
    """The QuotaExceeded refusal for ``used``/``limit``, retrying at the next reset."""
    return QuotaExceeded(used, limit, retry_after=seconds_to_reset())


def check_rate(user: models.User) -> None:
    """Take one message from the account's send rate; raise RateLimited when it is spent."""
    plan = plan_of(user)
    try:
        allowed, retry_after = limits.take_send_token(user.id, plan.send_rate_per_second, plan.send_burst)
    except limits.LimiterUnavailable as exc:
        raise metrics.refused(TemporaryFailure(f"rate limiter unavailable: {exc}")) from exc
    if not allowed:
        raise metrics.refused(RateLimited("Sending rate limit exceeded, try again later",
                                          retry_after=max(1, round(retry_after + 0.5))))


def quota_state(user: models.User) -> tuple[int, int]:
    """(used today, daily limit)."""
    return models.sends_today(user), plan_of(user).daily_send_limit


def check_quota(user: models.User, recipients: int, used: int | None = None) -> None:
    """Raise QuotaExceeded if ``recipients`` more sends would pass today's limit (no reservation).
    ``used``: today's count when the caller has just read it."""
    if used is None:
        used, limit = quota_state(user)
    else:
        limit = plan_of(user).daily_send_limit
    if used + recipients > limit:
        raise metrics.refused(exceeded(used, limit))


def usage(user: models.User) -> dict:
    """Today's sends against the plan's daily limit, as the dashboard's bars and the API's
    ``quota`` object show it: used, limit, left, percent (0-100) and resets_at."""
    used, limit = quota_state(user)
    return {"used": used, "limit": limit, "left": max(limit - used, 0),
            "percent": min(100, round(100 * used / limit)) if limit else 100, "resets_at": next_reset()}
