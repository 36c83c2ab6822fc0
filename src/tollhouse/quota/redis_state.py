"""Per-replica state of the Redis lease limiter: one counter per (customer, meter, period)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from datetime import date

from tollhouse.periods import Period
from tollhouse.quota.machinery import RateBuckets

__all__ = ["Counter", "CustomerState", "share"]


class Counter:
    """One (customer, meter, period) counter as seen by this replica."""

    __slots__ = (
        "budget",
        "checked_at",
        "degraded_used",
        "end_s",
        "key",
        "last_grant",
        "left",
        "meter",
        "pending",
        "quota_left",
        "quota_seen",
        "refill",
        "start_s",
        "state",
        "total",
    )

    def __init__(self, key: str, meter: str, period: Period) -> None:
        self.key, self.meter = key, meter
        self.start_s, self.end_s = period.start_s, period.end_s
        self.left = 0  # leased units not yet spent
        self.last_grant = 0
        self.quota_left = 0  # of which within the quota
        self.total: int | None = None  # units granted cluster-wide, as last seen
        self.pending = 0  # units used here and not yet added in Redis
        self.state = "new"  # new | ok | exhausted | error
        self.quota_seen = 0
        self.checked_at = 0.0
        self.refill: asyncio.Task[None] | None = None
        self.budget: int | None = None  # degraded allowance of this replica (Redis down)
        self.degraded_used = 0

    def used(self) -> int:
        """Units used cluster-wide as far as this replica knows (others' leases count as used)."""
        return (self.total or 0) - self.left + self.pending


class CustomerState:
    """One customer on this replica: its current period, counters and rate buckets."""

    __slots__ = ("anchor", "counters", "period", "plan", "quotas", "rate")

    def __init__(self, period: Period, anchor: date | None) -> None:
        self.period, self.anchor = period, anchor
        self.counters: dict[str, Counter] = {}
        self.rate = RateBuckets()
        self.plan = ""
        self.quotas: Mapping[str, int] = {}


def share(limit: int | None, n: int) -> int | None:
    """Return one replica's part of a rate limit split over ``n`` replicas (at least 1)."""
    return None if limit is None else max(1, math.ceil(limit / n))
