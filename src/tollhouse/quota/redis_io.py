"""Redis round trips of the lease limiter: Lua scripts, a timeout on each call, a call counter.

Every call is bounded by ``timeout_s`` (socket timeouts plus ``asyncio.wait_for``) and never
retried inline. A failed call opens a short circuit (``backoff_s``): until it passes, the limiter
does not try Redis on the request path at all, so a dead or paused Redis costs at most one
timeout per backoff period, not one per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from tollhouse.logs import get_logger
from tollhouse.quota import metrics

__all__ = ["ADD_LUA", "LEASE_LUA", "REPLICAS_KEY", "RESEED_LUA", "RedisIO", "counter_key"]

log = get_logger(__name__)
T = TypeVar("T")
REPLICAS_KEY = "tollhouse:quota:replicas"
RETAIN_S = 86_400  # counters outlive their period by a day (usage endpoint, late returns)
RECEIPT_S = 300

# A counter missing while a replica has seen it (Redis restarted without persistence, or was
# flushed) is re-seeded with the total that replica last saw (``seed``; 0 = never seen). The
# first replica to call wins; a seed is never added to a counter that exists.
RESEED_LUA = """
local function reseed(key, seed)
  if seed > 0 and redis.call('EXISTS', key) == 0 then
    redis.call('SET', key, seed)
    return 1
  end
  return 0
end
"""

# KEYS[1]: units granted so far in one (customer, meter, period); KEYS[2]: this lease's receipt,
# kept RECEIPT_S so that a replica whose reply was lost (timeout) can take the units back.
# ARGV: quota, want, period start_s, period end_s, overage ("deny"|"allow"), slack_s, retain_s,
# receipt_s, seed.
# Redis TIME decides whether the period is current, so replicas with skewed clocks cannot take
# units from a period that Redis says is over (or not begun): they get {-1, 0, 0, now} instead.
LEASE_LUA = (
    RESEED_LUA
    + """
local now = tonumber(redis.call('TIME')[1])
local quota = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local start_s = tonumber(ARGV[3])
local end_s = tonumber(ARGV[4])
local slack = tonumber(ARGV[6])
if now < start_s - slack or now >= end_s + slack then
  return {-1, 0, 0, now, 0}
end
local reseeded = reseed(KEYS[1], tonumber(ARGV[9]))
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local room = quota - used
if room < 0 then room = 0 end
local grant = want
if ARGV[5] == 'deny' and grant > room then grant = room end
if grant > 0 then
  used = redis.call('INCRBY', KEYS[1], grant)
  redis.call('SET', KEYS[2], grant, 'EX', tonumber(ARGV[8]))
end
redis.call('EXPIREAT', KEYS[1], end_s + tonumber(ARGV[7]))
local in_quota = grant
if in_quota > room then in_quota = room end
return {grant, used, in_quota, now, reseeded}
"""
)

# KEYS[1]: one counter. ARGV: seed, delta, expire_at_s. Returns {new total, re-seeded 0|1}.
ADD_LUA = (
    RESEED_LUA
    + """
local reseeded = reseed(KEYS[1], tonumber(ARGV[1]))
local total = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('EXPIREAT', KEYS[1], tonumber(ARGV[3]))
return {total, reseeded}
"""
)

# KEYS[1]: sorted set of live replicas. ARGV: instance, live_s. Returns the number of live ones.
HEARTBEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local live = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - live)
redis.call('EXPIRE', KEYS[1], math.ceil(live * 4))
return redis.call('ZCARD', KEYS[1])
"""


def counter_key(customer: str, meter: str, period_key: str) -> str:
    """Redis key of one (customer, meter, period) counter (customer hash-tagged for Cluster)."""
    return f"tollhouse:quota:{{{customer}}}:{meter}:{period_key}"


class RedisIO:
    """The limiter's Redis client: bounded calls, counted, with a circuit after a failure."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float],
        timeout_s: float,
        backoff_s: float = 1.0,
    ) -> None:
        self._clock = clock
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._down_until = 0.0
        self.calls = 0
        self.errors = 0
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._lease = self._client.register_script(LEASE_LUA)
        self._heartbeat = self._client.register_script(HEARTBEAT_LUA)
        self._add = self._client.register_script(ADD_LUA)
        self.reseeds = 0  # counters found missing and re-seeded (Redis lost its data)

    def _reseeded(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.reseeds += 1
            metrics.REDIS_RESEEDS.inc()
            log.warning("quota.counter_reseeded", counter=key)

    def available(self) -> bool:
        """Tell whether Redis may be tried (no call failed in the last ``backoff_s``)."""
        return self._clock() >= self._down_until

    async def _run(self, op: str, call: Callable[[], Awaitable[T]]) -> T | None:
        self.calls += 1
        metrics.REDIS_CALLS.labels(op).inc()
        try:
            return await asyncio.wait_for(call(), self._timeout_s)
        except (RedisError, OSError, TimeoutError) as e:
            self.errors += 1
            metrics.REDIS_ERRORS.labels(op).inc()
            if self.available():
                log.warning("quota.redis_unavailable", op=op, error=type(e).__name__)
            self._down_until = self._clock() + self._backoff_s
            return None

    async def lease(
        self,
        key: str,
        receipt: str,
        quota: int,
        want: int,
        start_s: int,
        end_s: int,
        overage: str,
        seed: int = 0,
    ) -> tuple[int, int, int, int] | None:
        """``(granted, total_granted, granted_within_quota, redis_now_s)``, or None on failure.

        ``seed``: the total this replica last saw (re-seeds the counter if Redis lost it).
        """
        args: list[str | int] = [quota, want, start_s, end_s, overage, 2, RETAIN_S, RECEIPT_S, seed]
        res = await self._run("lease", lambda: self._lease(keys=[key, receipt], args=args))
        if res is None:
            return None
        g, total, in_quota, now, reseeded = (int(x) for x in res)
        if reseeded:
            self._reseeded([key])
        return g, total, in_quota, now

    async def heartbeat(self, instance: str, live_s: float) -> int | None:
        """Register this replica as live; returns the number of live replicas."""
        res = await self._run(
            "heartbeat", lambda: self._heartbeat(keys=[REPLICAS_KEY], args=[instance, live_s])
        )
        return None if res is None else int(res)

    async def add(self, deltas: Sequence[tuple[str, int, int, int]]) -> list[int] | None:
        """Add each ``(key, delta, expire_at_s, seed)`` in one round trip; the new totals.

        One script call per counter (Cluster-safe); ``seed`` as in :meth:`lease`.
        """

        async def call() -> list[int]:
            pipe = self._client.pipeline(transaction=False)
            for key, delta, expire_at, seed in deltas:
                await self._add(keys=[key], args=[seed, delta, expire_at], client=pipe)
            out: list[Any] = await pipe.execute()
            self._reseeded([d[0] for d, (_, r) in zip(deltas, out, strict=True) if int(r)])
            return [int(total) for total, _ in out]

        return await self._run("add", call) if deltas else []

    async def reclaim(self, receipts: Sequence[str]) -> list[int] | None:
        """GETDEL each lease receipt: units granted by leases whose reply never arrived."""

        async def call() -> list[int]:
            pipe = self._client.pipeline(transaction=False)
            for r in receipts:
                pipe.getdel(r)
            return [int(v or 0) for v in await pipe.execute()]

        return await self._run("reclaim", call) if receipts else []

    async def leave(self, instance: str) -> None:
        """Remove this replica from the live set (so the others' shares grow at once)."""
        await self._run("leave", lambda: self._client.zrem(REPLICAS_KEY, instance))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
