"""Today's sends against the plan's daily limit, as the usage bars show it."""
from smtpd_worker import submission


def usage_of(user):
    used, limit = submission.quota_state(user)
    return {"used": used, "limit": limit, "left": max(limit - used, 0),
            "percent": min(100, round(100 * used / limit)) if limit else 100}
