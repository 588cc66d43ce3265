"""Rate limits kept in Redis, shared by every SMTP node, web process and the REST API.

- ``take_send_token``: the per-account send rate (GCRA: a steady rate with a burst).
- ``count_in_window``/``window_count``: fixed-window counters, e.g. failed AUTH per client IP
  (per IP, not per account, so nobody can lock a victim out) and failed dashboard logins.
"""
import time

import redis

from core import outbox
from core.errors import LimiterUnavailable


# GCRA (generic cell rate algorithm): one key holding the "theoretical arrival time".
# KEYS[1] key; ARGV: now_ms, interval_ms (1000/rate), burst. Returns {allowed, retry_after_ms}.
_GCRA = """
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
if tat < now then tat = now end
local allow_at = tat - (burst - 1) * interval
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0}
"""

_INCR_WINDOW = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


_scripts = {}  # source -> (connection, Script): the SHA is computed once, not per message


def _script(source):
    connection = outbox.connection()
    cached = _scripts.get(source)
    if cached is None or cached[0] is not connection:
        cached = _scripts[source] = (connection, connection.register_script(source))
    return cached[1]


def take_send_token(user_id, rate_per_second, burst):
    """Consume one send from the account's rate. Returns (allowed, retry_after_seconds)."""
    if rate_per_second <= 0:
        return True, 0.0
    interval_ms = 1000.0 / rate_per_second
    try:
        allowed, retry_ms = _script(_GCRA)(keys=[outbox.key("rate", user_id)],
                                           args=[int(time.time() * 1000), interval_ms, max(int(burst), 1)])
    except redis.RedisError as exc:
        raise LimiterUnavailable(str(exc)) from exc
    return bool(allowed), float(retry_ms) / 1000.0


def count_in_window(name, ident, window_seconds):
    """Generic fixed-window counter (login throttling and the like). Returns the new count."""
    try:
        return int(_script(_INCR_WINDOW)(keys=[outbox.key(name, ident)], args=[int(window_seconds)]))
    except redis.RedisError as exc:
        raise LimiterUnavailable(str(exc)) from exc


def window_count(name, ident):
    try:
        return int(outbox.connection().get(outbox.key(name, ident)) or 0)
    except redis.RedisError as exc:
        raise LimiterUnavailable(str(exc)) from exc
