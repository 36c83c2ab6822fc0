"""Quota test support: Redis lease limiters on the test Redis, limits, counters read back."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

from tollhouse.periods import period_for
from tollhouse.quota import Limits
from tollhouse.quota.redis_io import counter_key
from tollhouse.quota.redis_leases import RedisLeaseLimiter

__all__ = ["SLACK_S", "customer", "granted", "limits", "make"]

# Exactness tests use a generous Redis timeout: on a loaded 2-core CI box a 50 ms timeout can
# fire and turn an admit into counters_unavailable, which is the outage tests' subject, not theirs.
SLACK_S = 1.0


def limits(q: int, **kw: Any) -> Limits:
    """Plan ``free``: a quota of ``q`` requests, no rate limits, deny and fail closed."""
    base: dict[str, Any] = {
        "plan": "free",
        "quotas": {"requests": q},
        "per_second": None,
        "per_minute": None,
        "overage": "deny",
        "on_counter_error": "fail_closed",
        "anchor": None,
    }
    base.update(kw)
    return Limits(**base)


def customer() -> str:
    """A fresh customer id (the test Redis is shared by the session)."""
    return f"cust-{uuid.uuid4().hex[:10]}"


def make(url: str, name: str, **kw: Any) -> RedisLeaseLimiter:
    """A Redis lease limiter on ``url`` with a unique instance name."""
    return RedisLeaseLimiter(url, clock=time.time, instance=f"{name}-{uuid.uuid4().hex[:6]}", **kw)


def granted(url: str, cust: str) -> int:
    """Units Redis has granted ``cust`` this calendar month."""
    r = redis.Redis.from_url(url)
    try:
        raw = r.get(counter_key(cust, "requests", period_for(time.time(), None).key))
        return int(raw or 0)  # type: ignore[arg-type]
    finally:
        r.close()
