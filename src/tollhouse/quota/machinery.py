"""Machinery the limiters share: RateLimit headers, rate buckets, admission values, gauges."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from tollhouse.periods import Period
from tollhouse.quota import metrics
from tollhouse.quota.limiter import Admission, Headers, Limits, PolicyItem, Ticket

__all__ = ["GaugeBoard", "RateBuckets", "allowed", "denied", "format_headers", "quota_items"]


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


def standing_headers(
    limits: Limits,
    used: Mapping[str, tuple[int, int]],
    period: Period,
    rate: RateBuckets,
    shares: tuple[int | None, int | None],
    now_s: float,
) -> Headers:
    """RateLimit headers of an answer that spends nothing: every quota and rate limit, as is.

    ``used``: the limiter's ``snapshot``; ``rate``: the customer's buckets (refilled to ``now_s``
    as ``admit`` would, without taking a token); ``shares``: this replica's per-second and
    per-minute limits.
    """
    items = quota_items(list(limits.quotas), limits, lambda m: used[m][0], period, now_s)
    ps, pm = shares
    if ps is not None or pm is not None:
        rate.refill(ps, pm, now_s)
        items += rate.items(ps, pm)
    return format_headers(items)
