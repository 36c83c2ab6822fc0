"""The limiter contract: effective limits in, an admission value out. Shared pieces live here.

A :class:`Limiter` answers, per request, whether the customer is within its rate limits and its
quotas for the current billing period (:mod:`tollhouse.quota.windows`). Two implementations:

* ``memory`` (:mod:`tollhouse.quota.memory`): one replica, in process memory.
* ``redis://`` (:mod:`tollhouse.quota.redis_leases`): replicas take leases of quota units from
  Redis and spend them locally.

The caller computes :class:`Limits` (plan values after overrides and top-ups) and passes them on
every call, so an upgrade or a top-up applies to the very next request; the counters are kept per
customer, not per plan, so a plan change keeps what was used in the period.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal, Protocol

from tollhouse.quota import metrics

__all__ = [
    "Admission",
    "GaugeBoard",
    "Headers",
    "Limiter",
    "Limits",
    "RateBuckets",
    "Ticket",
    "allowed",
    "claim_release",
    "denied",
    "format_headers",
    "open_limiter",
]

Headers = tuple[tuple[str, str], ...]
# One advertised policy: (name, quota, window_s, remaining, reset_s, unit or "").
PolicyItem = tuple[str, int, int, int, int, str]


@dataclass(frozen=True, slots=True)
class Limits:
    """Effective limits for one customer right now (computed by the caller)."""

    plan: str
    quotas: Mapping[str, int]  # meter -> units per period, after overrides and top-ups
    per_second: int | None
    per_minute: int | None
    overage: Literal["deny", "allow"]
    on_counter_error: Literal["fail_closed", "local"]
    anchor: date | None
    # Meters whose unit is one admitted request (MeterConfig.source == "requests"); the others
    # (bytes, tokens) are only checked at admission and grow through add_usage().
    request_meters: frozenset[str] = frozenset({"requests"})


@dataclass(slots=True)
class Ticket:
    """What one admission reserved, so that :meth:`Limiter.release` can give it back once."""

    customer: str
    period_key: str
    units: tuple[tuple[str, int], ...]  # (meter, kind): kind 0 in quota, 1 overage, 2 degraded
    per_second: bool
    per_minute: bool
    released: bool = False


def claim_release(admission: Admission, customers: Mapping[str, Any]) -> tuple[Ticket, Any] | None:
    """The part of ``release`` both limiters share.

    Marks the admission's ticket released (once) and gives back its rate tokens; returns the
    ticket and the customer's state when units of the still-current period are to be returned.
    """
    t = admission.ticket
    if not isinstance(t, Ticket) or t.released:
        return None
    t.released = True
    c = customers.get(t.customer)
    if c is None:
        return None
    c.rate.give_back(t.per_second, t.per_minute)
    return (t, c) if c.period.key == t.period_key else None


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's answer. ``headers`` go to the client on allowed and denied answers alike."""

    allowed: bool
    code: str  # "" | "quota_exceeded" | "rate_limited" | "counters_unavailable"
    limit: str  # which limit decided, e.g. "requests/period", "per_second"
    retry_after_s: int  # for 429 / 503
    headers: Headers
    degraded: bool  # decided without the shared counters
    overage: bool  # admitted beyond the quota because overage == allow
    ticket: object | None = field(default=None, compare=False)


class Limiter(Protocol):
    """Quotas per billing period and rate limits per customer."""

    async def start(self) -> None:
        """Connect and start background work (no-op for memory)."""

    async def stop(self) -> None:
        """Return unused leases, flush pending usage, close connections."""

    async def admit(
        self, customer: str, meters: Sequence[str], limits: Limits, now_s: float
    ) -> Admission:
        """Decide one request of the feature whose meters are ``meters``; reserve its units."""

    def release(self, admission: Admission) -> None:
        """Give back what ``admission`` reserved (the request was not admitted after all)."""

    def add_usage(
        self, customer: str, meter: str, units: int, limits: Limits, now_s: float
    ) -> None:
        """Count units known only after the response (bytes, tokens) against the quota."""

    def refund(self, customer: str, meters: Sequence[str], limits: Limits, at_s: float) -> int:
        """Give back the request units of a request admitted at ``at_s`` and never served.

        For a reservation that ended VOIDED (no ticket: it may have been admitted by another
        replica or before a restart); nothing when ``at_s`` is not in the current period.
        """

    def snapshot(self, customer: str, limits: Limits, now_s: float) -> dict[str, tuple[int, int]]:
        """Meter -> (used, limit) in the current period, for the customer-facing usage endpoint."""

    def customer_ids(self) -> list[str]:
        """The customers whose counters this replica holds now (for alert evaluation)."""


@functools.lru_cache(maxsize=1024)
def _sf_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=4096)
def _policy_part(name: str, quota: int, window_s: int, unit: str) -> str:
    """One list member of RateLimit-Policy: it only changes with the limits, so it is cached."""
    unit_param = f";qu={_sf_string(unit)}" if unit else ""
    return f"{_sf_string(name)};q={quota};w={window_s}{unit_param}"


def format_headers(items: Iterable[PolicyItem]) -> Headers:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-11 syntax).

    ``RateLimit-Policy: "requests/period";q=1000;w=2592000, "per_second";q=5;w=1`` and
    ``RateLimit: "requests/period";r=998;t=86400, "per_second";r=4;t=1``.
    """
    policy: list[str] = []
    state: list[str] = []
    for name, quota, window_s, remaining, reset_s, unit in items:
        policy.append(_policy_part(name, quota, window_s, unit))
        state.append(f"{_sf_string(name)};r={max(0, remaining)};t={max(0, reset_s)}")
    if not policy:
        return ()
    return (("ratelimit-policy", ", ".join(policy)), ("ratelimit", ", ".join(state)))


def allowed(
    headers: Headers, *, ticket: Ticket, overage: bool = False, degraded: bool = False
) -> Admission:
    """Build an admitted answer."""
    if degraded:
        metrics.DEGRADED.labels("true").inc()
    return Admission(True, "", "", 0, headers, degraded, overage, ticket)


def denied(
    code: str, limit: str, retry_after_s: int, headers: Headers, *, degraded: bool = False
) -> Admission:
    """Build a refusal (nothing was consumed); counts the denial."""
    metrics.DENIALS.labels(code, limit).inc()
    if degraded:
        metrics.DEGRADED.labels("false").inc()
    return Admission(False, code, limit, max(1, retry_after_s), headers, degraded, False, None)


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - 1e-9))


class RateBuckets:
    """Two token buckets (per second, per minute) for one customer; O(1), no allocation.

    A bucket holds up to ``cap`` tokens and refills at ``cap`` per window, so a client may burst
    ``cap`` requests and then sustain ``cap`` per window. A denied request takes no token.
    """

    __slots__ = ("_min", "_min_at", "_sec", "_sec_at")

    def __init__(self) -> None:
        self._sec = -1.0
        self._sec_at = 0.0
        self._min = -1.0
        self._min_at = 0.0

    def refill(self, per_second: int | None, per_minute: int | None, now: float) -> None:
        """Bring both buckets to ``now`` (a lowered cap clamps the tokens at once)."""
        if per_second is not None:
            if self._sec < 0:
                self._sec = float(per_second)
            else:
                gained = max(0.0, now - self._sec_at) * per_second
                self._sec = min(float(per_second), self._sec + gained)
            self._sec_at = now
        if per_minute is not None:
            if self._min < 0:
                self._min = float(per_minute)
            else:
                gained = max(0.0, now - self._min_at) * per_minute / 60.0
                self._min = min(float(per_minute), self._min + gained)
            self._min_at = now

    def blocked(self, per_second: int | None, per_minute: int | None) -> tuple[str, int] | None:
        """``(limit, retry_after_s)`` of the first empty bucket, or None (call refill first)."""
        if per_second is not None and self._sec < 1.0:
            return "per_second", max(1, _ceil((1.0 - self._sec) / per_second))
        if per_minute is not None and self._min < 1.0:
            return "per_minute", max(1, _ceil((1.0 - self._min) * 60.0 / per_minute))
        return None

    def take(self, per_second: int | None, per_minute: int | None) -> None:
        """Spend one token from each limited bucket."""
        if per_second is not None:
            self._sec -= 1.0
        if per_minute is not None:
            self._min -= 1.0

    def give_back(self, per_second: bool, per_minute: bool) -> None:
        """Return the tokens of a released admission (refill() clamps to the cap)."""
        if per_second and self._sec >= 0:
            self._sec += 1.0
        if per_minute and self._min >= 0:
            self._min += 1.0

    def items(self, per_second: int | None, per_minute: int | None) -> list[PolicyItem]:
        """Header items for the limited buckets (advertised limit, remaining, seconds to full)."""
        out: list[PolicyItem] = []
        if per_second is not None:
            t = _ceil((per_second - self._sec) / per_second)
            out.append(("per_second", per_second, 1, int(self._sec), t, ""))
        if per_minute is not None:
            t = _ceil((per_minute - self._min) * 60.0 / per_minute)
            out.append(("per_minute", per_minute, 60, int(self._min), t, ""))
        return out


class GaugeBoard:
    """Publishes per-plan used/remaining gauges at most every ``every_s`` seconds (cheap)."""

    __slots__ = ("_every_s", "_labels", "_next")

    def __init__(self, every_s: float = 5.0) -> None:
        self._every_s = every_s
        self._next = 0.0
        self._labels: set[tuple[str, str]] = set()

    def due(self, now_s: float) -> bool:
        """Tell whether the gauges should be recomputed now."""
        if now_s < self._next:
            return False
        self._next = now_s + self._every_s
        return True

    def publish(self, rows: Iterable[tuple[str, str, int, int]]) -> None:
        """Set gauges from ``(plan, meter, used, limit)`` rows, zeroing plans no longer seen."""
        used: dict[tuple[str, str], int] = {}
        remaining: dict[tuple[str, str], int] = {}
        for plan, meter, u, q in rows:
            used[(plan, meter)] = used.get((plan, meter), 0) + u
            remaining[(plan, meter)] = remaining.get((plan, meter), 0) + max(0, q - u)
        for lbl in self._labels - used.keys():
            metrics.QUOTA_USED.labels(*lbl).set(0)
            metrics.QUOTA_REMAINING.labels(*lbl).set(0)
        for lbl, u in used.items():
            metrics.QUOTA_USED.labels(*lbl).set(u)
            metrics.QUOTA_REMAINING.labels(*lbl).set(remaining[lbl])
        self._labels = set(used)


def open_limiter(
    counters: str,
    *,
    clock: Callable[[], float],
    instance: str,
    lease_size: int = 1000,
    timeout_s: float = 0.05,
    counters_file: Path | None = None,
) -> Limiter:
    """``"memory"`` -> in-process limiter; ``"redis://..."`` -> Redis lease limiter.

    ``counters_file`` (memory only): where the counters survive restarts; None = not at all.
    """
    if counters == "memory":
        from tollhouse.quota.memory import MemoryLimiter

        return MemoryLimiter(clock=clock, path=counters_file, lease_size=lease_size)
    if counters.startswith("redis://"):
        from tollhouse.quota.redis_leases import RedisLeaseLimiter

        return RedisLeaseLimiter(
            counters, clock=clock, instance=instance, lease_size=lease_size, timeout_s=timeout_s
        )
    raise ValueError("counters must be 'memory' or redis://host:port/db")
