"""The embedded limiter: one replica, counters in process memory, O(1) per admit, no awaits.

State per customer: the current period, units used per meter in it, and two token buckets.
Counters are kept per customer (not per plan), so a plan change keeps the period's usage and
applies the new allowance on the next request. A new period starts from zero. With a counter
file (:mod:`tollhouse.quota.persist`) the counters survive restarts; the Check still never
waits on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from tollhouse.periods import Period, period_for, roll
from tollhouse.quota.limiter import Admission, Headers, Limits, Ticket, claim_release
from tollhouse.quota.machinery import (
    GaugeBoard,
    RateBuckets,
    allowed,
    denied,
    format_headers,
    quota_items,
    standing_headers,
)
from tollhouse.quota.persist import CounterSaver, CustomerCounts

__all__ = ["MemoryLimiter"]


class MemoryLimiter:
    """In-process quotas and rate limits for a single replica."""

    def __init__(
        self, *, clock: Callable[[], float], path: Path | None = None, lease_size: int = 1000
    ) -> None:
        self._clock = clock
        self._customers: dict[str, CustomerCounts] = {}
        self._gauges = GaugeBoard()
        self.saver = (
            None if path is None else CounterSaver(path, clock=clock, lease_size=lease_size)
        )

    async def start(self) -> None:
        """Load the counter file, if any (before the process serves)."""
        if self.saver is not None:
            await self.saver.start()

    async def stop(self) -> None:
        """Write the exact counts to the counter file, if any."""
        if self.saver is not None:
            await self.saver.stop(self._customers.values())

    def _seed(self, customer: str, period: Period) -> dict[str, int]:
        return {} if self.saver is None else self.saver.seed(customer, period.key)

    def _customer(self, customer: str, limits: Limits, now_s: float) -> CustomerCounts:
        c = self._customers.get(customer)
        if c is None:
            period = period_for(now_s, limits.anchor)
            c = CustomerCounts(customer, period, limits.anchor, self._seed(customer, period))
            self._customers[customer] = c
        elif (moved := roll(c.period, c.anchor, limits.anchor, now_s)) is not None:
            c.anchor = limits.anchor
            if moved[1]:
                c.restart_period(moved[0], self._seed(customer, moved[0]))
            else:
                c.period = moved[0]
        c.plan, c.quotas = limits.plan, limits.quotas
        return c

    async def admit(
        self, customer: str, meters: Sequence[str], limits: Limits, now_s: float
    ) -> Admission:
        """Decide one request; never awaits."""
        return self.decide(customer, meters, limits, now_s)

    def decide(
        self, customer: str, meters: Sequence[str], limits: Limits, now_s: float
    ) -> Admission:
        """Decide synchronously: the body of :meth:`admit`."""
        c = self._customer(customer, limits, now_s)
        if self._gauges.due(now_s):
            self._publish(now_s)
        ps, pm = limits.per_second, limits.per_minute
        c.rate.refill(ps, pm, now_s)
        used = c.used
        hit = c.rate.blocked(ps, pm)
        if hit is not None:
            return denied("rate_limited", hit[0], hit[1], self._headers(c, meters, limits, now_s))
        over = False
        for m in meters:
            q = limits.quotas.get(m)
            if q is not None and used.get(m, 0) >= q:
                if limits.overage == "deny":
                    retry = int(c.period.end_s - now_s + 0.999999)
                    headers = self._headers(c, meters, limits, now_s)
                    return denied("quota_exceeded", f"{m}/period", retry, headers)
                over = True
        c.rate.take(ps, pm)
        units: list[tuple[str, int]] = []
        for m in meters:
            if m in limits.request_meters:
                n = used.get(m, 0)
                q = limits.quotas.get(m)
                units.append((m, 1 if q is not None and n >= q else 0))
                used[m] = n + 1
                if self.saver is not None:
                    self.saver.spent(c, m, n + 1, limits)
        ticket = Ticket(customer, c.period.key, tuple(units), ps is not None, pm is not None)
        return allowed(self._headers(c, meters, limits, now_s), ticket=ticket, overage=over)

    def _headers(
        self, c: CustomerCounts, meters: Sequence[str], limits: Limits, now_s: float
    ) -> tuple[tuple[str, str], ...]:
        items = quota_items(meters, limits, lambda m: c.used.get(m, 0), c.period, now_s)
        items += c.rate.items(limits.per_second, limits.per_minute)
        return format_headers(items)

    def release(self, admission: Admission) -> None:
        """Give back the units and rate tokens of ``admission`` (once; same period only)."""
        claimed = claim_release(admission, self._customers)
        if claimed is not None:
            t, c = claimed
            for m, _kind in t.units:
                c.used[m] = max(0, c.used.get(m, 0) - 1)

    def add_usage(
        self, customer: str, meter: str, units: int, limits: Limits, now_s: float
    ) -> None:
        """Count post-hoc units (bytes, tokens) in the period containing ``now_s``."""
        if units <= 0:
            return
        c = self._customer(customer, limits, now_s)
        c.used[meter] = c.used.get(meter, 0) + units
        if self.saver is not None:
            self.saver.touched(c, meter)

    def refund(self, customer: str, meters: Sequence[str], limits: Limits, at_s: float) -> int:
        """Give back the request units of an admission at ``at_s`` that was never served.

        Only while its period is the customer's current one; returns the units given back.
        """
        c = self._customers.get(customer)
        if c is None or not c.period.contains(at_s):
            return 0
        n = 0
        for m in meters:
            if m in limits.request_meters and c.used.get(m, 0) > 0:
                c.used[m] -= 1
                n += 1
        return n

    def customer_ids(self) -> list[str]:
        """The customers whose counters this replica holds now (for alert evaluation)."""
        return list(self._customers)

    def snapshot(self, customer: str, limits: Limits, now_s: float) -> dict[str, tuple[int, int]]:
        """Meter -> (used, limit) for every quota in ``limits``."""
        c = self._customer(customer, limits, now_s)
        return {m: (c.used.get(m, 0), q) for m, q in limits.quotas.items()}

    def standing(self, customer: str, limits: Limits, now_s: float) -> Headers:
        """RateLimit headers of every quota and rate limit, taking nothing."""
        used = self.snapshot(customer, limits, now_s) if limits.quotas else {}
        c = self._customers.get(customer)
        period = c.period if c is not None else period_for(now_s, limits.anchor)
        rate = c.rate if c is not None else RateBuckets()
        return standing_headers(
            limits, used, period, rate, (limits.per_second, limits.per_minute), now_s
        )

    def refresh_gauges(self, now_s: float) -> None:
        """Publish the quota gauges (``admit`` publishes them too, at most once a second)."""
        self._publish(now_s)

    def _publish(self, now_s: float) -> None:
        self._gauges.publish(
            (c.plan, m, c.used.get(m, 0), q)
            for c in self._customers.values()
            if c.period.contains(now_s)
            for m, q in c.quotas.items()
        )
