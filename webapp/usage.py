"""Today's sends against the plan's daily limit, as the usage bars show it."""
from core import submit


def usage_of(user):
    used, limit = submit.quota_state(user)
    return {"used": used, "limit": limit, "left": max(limit - used, 0),
            "percent": min(100, round(100 * used / limit)) if limit else 100}
