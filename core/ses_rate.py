"""The cluster-wide SES send-rate governor: one schedule in Redis shared by every relay worker on
every machine, so the cluster never sends faster than the account's ``MaxSendRate``.

The rate: ``relay.max_send_rate`` when set (> 0); otherwise SES ``GetAccount``'s
``SendQuota.MaxSendRate``, read by whichever worker finds the shared copy in Redis missing or
older than ``relay.send_rate_refresh`` and kept there for the others. If neither is known (the
local stand-in has no GetAccount; an IAM policy without ``ses:GetAccount``), the governor lets
calls through and logs a warning each refresh: SES's own throttling answers (retried with
backoff) are then the only brake.

The schedule is GCRA, a token bucket kept as one "theoretical arrival time" (TAT): each send
reserves the next slot, ``tat = max(tat, now) + 1/rate``, and waits until ``tat - burst/rate``.
One round trip per message (a Lua script; the clock is Redis's ``TIME``, so machines' clocks do
not matter), no polling, and waiters are served in the order they asked.

Throttling: when SES answers "sending rate exceeded", ``throttled()`` halves a shared factor
(down to ``MIN_FACTOR``) and pushes the TAT out by one slot at the reduced rate: every worker
slows at once. The factor climbs back linearly to 1 over ``RECOVERY`` seconds without further
throttling (additive increase, multiplicative decrease).
"""
import logging
import threading
import time

import redis

import settings
from core import outbox
from core import ses

log = logging.getLogger(__name__)

BURST = 1.0  # slots that may go at once after an idle spell (1 = no burst beyond the rate)
MIN_FACTOR = 1 / 16  # a throttled cluster slows to no less than this share of the rate
RECOVERY = 30.0  # seconds for the factor to climb from 0 back to 1 after the last throttling answer
THROTTLE_CODES = {"TooManyRequestsException", "Throttling", "ThrottlingException"}

# KEYS[1] the schedule hash {tat, factor, throttled_at}; ARGV: rate, burst, recovery, throttle (0/1), min factor.
# Returns {seconds to wait (string), effective rate (string)}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, recovery = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'tat', 'factor', 'throttled_at')
local tat = math.max(tonumber(h[1]) or now, now)
local factor = 1
if h[2] then factor = math.min(1, tonumber(h[2]) + (now - tonumber(h[3])) / recovery) end
if ARGV[4] == '1' then
  factor = math.max(tonumber(ARGV[5]), factor / 2)
  redis.call('HSET', KEYS[1], 'tat', tostring(tat + 1 / (rate * factor)), 'factor', tostring(factor),
             'throttled_at', tostring(now))
  redis.call('EXPIRE', KEYS[1], 3600)
  return {'0', tostring(rate * factor)}
end
local interval = 1 / (rate * factor)
tat = tat + interval
local wait = tat - burst * interval - now
if wait < 0 then wait = 0 end
redis.call('HSET', KEYS[1], 'tat', tostring(tat))
redis.call('EXPIRE', KEYS[1], 3600)
return {tostring(wait), tostring(rate * factor)}
"""


def schedule_key():
    return outbox.key("ses-rate", "schedule")


def account_rate_key():
    return outbox.key("ses-rate", "max-send-rate")


class Governor:
    """A process's handle on the shared schedule (thread-safe; one per worker process)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rate, self._rate_read_at = None, float("-inf")
        self._local_tat = 0.0  # this process's own schedule, used only while Redis is unreachable

    # -- the rate ---------------------------------------------------------------------------
    def rate(self):
        """Messages per second for the whole cluster, or None when unknown (calls go ungoverned)."""
        relay = settings.current().relay
        if relay.max_send_rate > 0:
            return relay.max_send_rate
        with self._lock:
            if time.monotonic() - self._rate_read_at >= relay.send_rate_refresh:
                self._rate_read_at = time.monotonic()
                self._rate = _shared_account_rate(relay.send_rate_refresh)
            return self._rate

    # -- the schedule -----------------------------------------------------------------------
    def reserve(self):
        """Reserve the next send slot; returns the seconds to wait before sending (0: now)."""
        rate = self.rate()
        if not rate:
            return 0.0
        return self._call(rate, throttle=False)[0]

    def throttled(self):
        """SES answered "rate exceeded": halve the cluster's rate (see the module docstring)."""
        rate = self.rate()
        if not rate:
            return None
        effective = self._call(rate, throttle=True)[1]
        log.warning("SES throttled a send: the cluster's send rate is now %.2f/s (of %.2f/s)", effective, rate)
        return effective

    def effective_rate(self):
        """The cluster's current rate after throttling (reads the schedule; reserves nothing)."""
        rate = self.rate()
        if not rate:
            return None
        found = outbox.connection().hmget(schedule_key(), "factor", "throttled_at")
        if found[0] is None:
            return rate
        now = _redis_now()
        factor = min(1.0, float(found[0]) + (now - float(found[1])) / RECOVERY)
        return rate * factor

    def _call(self, rate, throttle):
        try:
            script = outbox.connection().register_script(_SCRIPT)  # EVALSHA; cheap to build
            wait, effective = script(keys=[schedule_key()],
                                           args=[repr(float(rate)), repr(BURST), repr(RECOVERY),
                                                 "1" if throttle else "0", repr(MIN_FACTOR)])
            return float(wait), float(effective)
        except redis.RedisError as exc:
            # Without Redis the cluster cannot share a schedule: keep this process alone under the rate.
            log.warning("SES rate governor unavailable (%s): pacing this process alone", exc)
            return (0.0 if throttle else self._local_reserve(rate)), rate

    def _local_reserve(self, rate):
        with self._lock:
            now = time.monotonic()
            self._local_tat = max(self._local_tat, now) + 1.0 / rate
            return max(0.0, self._local_tat - BURST / rate - now)


def _redis_now():
    seconds, micros = outbox.connection().time()
    return seconds + micros / 1_000_000


def _shared_account_rate(refresh):
    """MaxSendRate from the copy in Redis, or from SES GetAccount (then shared for ``refresh`` s)."""
    try:
        cached = outbox.connection().get(account_rate_key())
        if cached is not None:
            return float(cached) or None
    except redis.RedisError as exc:
        log.warning("could not read the shared SES send rate: %s", exc)
    rate = read_account_rate()
    try:  # a failed read is shared too (as 0), so the cluster asks SES once per refresh, not per worker
        outbox.connection().set(account_rate_key(), repr(float(rate or 0)), ex=max(1, int(refresh)))
    except redis.RedisError:
        pass
    return rate


def read_account_rate():
    """SES GetAccount's SendQuota.MaxSendRate, or None (logged) when SES cannot say."""
    try:
        quota = ses.new_client("account", settings.current().ses).get_account().get("SendQuota") or {}
        rate = float(quota.get("MaxSendRate") or 0)
    except Exception as exc:  # any failure means "unknown": the governor steps aside, SES throttling still brakes
        log.warning("SES GetAccount failed (%s): relay.max_send_rate = 0 and the account's MaxSendRate is "
                    "unknown, so sends are not paced; set relay.max_send_rate", exc)
        return None
    return rate or None


GOVERNOR = Governor()
