"""The limiter contract: effective limits in, an admission value out.

A :class:`Limiter` answers, per request, whether the customer is within its rate limits and its
quotas for the current billing period (:mod:`tollhouse.periods`). Two implementations:

* ``memory`` (:mod:`tollhouse.quota.memory`): one replica, in process memory.
* ``redis://`` (:mod:`tollhouse.quota.redis_leases`): replicas take leases of quota units from
  Redis and spend them locally.

The caller computes :class:`Limits` (plan values after overrides and top-ups) and passes them on
every call, so an upgrade or a top-up applies to the very next request; the counters are kept per
customer, not per plan, so a plan change keeps what was used in the period.

Inside ``quota/`` imports go one way (an import-linter contract in pyproject.toml): the factory
(:mod:`~tollhouse.quota.factory`) -> the limiters (``memory``, ``redis_leases``, each unaware of
the other) -> their parts (``persist``, ``redis_state``, ``redis_io``) -> the shared machinery
(:mod:`~tollhouse.quota.machinery`) -> this contract -> ``windows``, ``metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, Protocol

__all__ = ["Admission", "Headers", "Limiter", "Limits", "PolicyItem", "Ticket", "claim_release"]

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

    def standing(self, customer: str, limits: Limits, now_s: float) -> Headers:
        """RateLimit headers of an answer that spends nothing (402, 403, a free feature)."""

    def refresh_gauges(self, now_s: float) -> None:
        """Recompute the quota gauges now (on each /metrics scrape; Redis: its own tick)."""

    def customer_ids(self) -> list[str]:
        """The customers whose counters this replica holds now (for alert evaluation)."""
