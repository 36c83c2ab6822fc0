"""The embedded limiter: one replica, counters in process memory, O(1) per admit, no awaits.

State per customer: the current period, units used per meter in it, and two token buckets.
Counters are kept per customer (not per plan), so a plan change keeps the period's usage and
applies the new allowance on the next request. A new period starts from zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date

from tollhouse.quota.limiter import (
    Admission,
    GaugeBoard,
    Limits,
    PolicyItem,
    RateBuckets,
    Ticket,
    allowed,
    claim_release,
    denied,
    format_headers,
)
from tollhouse.quota.windows import Period, period_for, roll

__all__ = ["MemoryLimiter", "quota_items"]


class _Customer:
    __slots__ = ("anchor", "period", "plan", "quotas", "rate", "used")

    def __init__(self, period: Period, anchor: date | None) -> None:
        self.period = period
        self.anchor = anchor
        self.used: dict[str, int] = {}
        self.rate = RateBuckets()
        self.plan = ""
        self.quotas: Mapping[str, int] = {}


def quota_items(
    meters: Sequence[str], limits: Limits, used: Callable[[str], int], period: Period, now_s: float
) -> list[PolicyItem]:
    """Header items for the quotas of ``meters`` (window = the billing period)."""
    out: list[PolicyItem] = []
    for m in meters:
        q = limits.quotas.get(m)
        if q is None:
            continue
        unit = "" if m in limits.request_meters else m
        reset = max(0, int(period.end_s - now_s + 0.999999))
        out.append((f"{m}/period", q, period.length_s, q - used(m), reset, unit))
    return out


class MemoryLimiter:
    """In-process quotas and rate limits for a single replica."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._customers: dict[str, _Customer] = {}
        self._gauges = GaugeBoard()

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to flush: counters are not the billing record."""

    def _customer(self, customer: str, limits: Limits, now_s: float) -> _Customer:
        c = self._customers.get(customer)
        if c is None:
            c = _Customer(period_for(now_s, limits.anchor), limits.anchor)
            self._customers[customer] = c
        elif (moved := roll(c.period, c.anchor, limits.anchor, now_s)) is not None:
            c.period, c.anchor = moved[0], limits.anchor
            if moved[1]:
                c.used = {}
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
        ticket = Ticket(customer, c.period.key, tuple(units), ps is not None, pm is not None)
        return allowed(self._headers(c, meters, limits, now_s), ticket=ticket, overage=over)

    def _headers(
        self, c: _Customer, meters: Sequence[str], limits: Limits, now_s: float
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

    def snapshot(self, customer: str, limits: Limits, now_s: float) -> dict[str, tuple[int, int]]:
        """Meter -> (used, limit) for every quota in ``limits``."""
        c = self._customer(customer, limits, now_s)
        return {m: (c.used.get(m, 0), q) for m, q in limits.quotas.items()}

    def _publish(self, now_s: float) -> None:
        self._gauges.publish(
            (c.plan, m, c.used.get(m, 0), q)
            for c in self._customers.values()
            if c.period.contains(now_s)
            for m, q in c.quotas.items()
        )
