"""Plain values of prepaid credits: grants, the auto-recharge rule, and a customer's spend cap.

Amounts are integer minor units of the grant's currency (``100`` is 1.00 USD, 100 JPY).
Consumption is counted finer, in thousandths of a minor unit (:data:`MILLI`), so that a price of
0.0015 USD per token is charged exactly; a balance shown to people is rounded down to the minor
unit (never more than is really left).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "GRANT_SOURCES",
    "MILLI",
    "CreditGrant",
    "GrantSource",
    "RechargeRule",
    "SpendCap",
    "balance_milli",
    "grant_order",
    "remaining_milli",
]

GrantSource = Literal["purchase", "promotional", "refund"]
GRANT_SOURCES: tuple[GrantSource, ...] = ("purchase", "promotional", "refund")
MILLI = 1000  # consumption unit: 1/1000 of a minor unit (``credit_consumed``, credit counters)


@dataclass(frozen=True, slots=True)
class CreditGrant:
    """An amount of credit, usable from ``effective_at`` until ``expires_at`` (Unix s, UTC).

    ``priority``: lower is consumed first; among equal priorities the grant expiring first.
    ``meters`` / ``features``: the scope; empty means every meter / feature.
    """

    id: str
    customer: str
    amount: int
    currency: str
    priority: int
    effective_at: float
    expires_at: float | None
    meters: frozenset[str]
    features: frozenset[str]
    source: GrantSource
    voided_at: float | None
    created_at: float

    def usable(self, now: float) -> bool:
        """Not voided, in effect, and not expired at ``now`` (an expired grant is never used)."""
        return (
            self.voided_at is None
            and self.effective_at <= now
            and (self.expires_at is None or now < self.expires_at)
        )

    def covers(self, meter: str, feature: str) -> bool:
        """Whether spend on ``meter`` through ``feature`` may use this grant."""
        return (not self.meters or meter in self.meters) and (
            not self.features or feature in self.features
        )

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form (admin API, audit log)."""
        return {
            "id": self.id,
            "customer": self.customer,
            "amount": self.amount,
            "currency": self.currency,
            "priority": self.priority,
            "effective_at": self.effective_at,
            "expires_at": self.expires_at,
            "scope": {"meters": sorted(self.meters), "features": sorted(self.features)},
            "source": self.source,
            "voided_at": self.voided_at,
            "created_at": self.created_at,
        }


def grant_order(g: CreditGrant) -> tuple[int, float, float, str]:
    """Sort key: priority, then the earliest expiry (none: last), then age, then id."""
    return (g.priority, math.inf if g.expires_at is None else g.expires_at, g.created_at, g.id)


def remaining_milli(g: CreditGrant, consumed_milli: int) -> int:
    """What is left of ``g`` (in 1/1000 minor units) once ``consumed_milli`` of it is spent."""
    return max(0, g.amount * MILLI - consumed_milli)


def balance_milli(grants: Iterable[CreditGrant], consumed: Mapping[str, int], now: float) -> int:
    """The balance at ``now``: what is left of the usable grants, in 1/1000 minor units.

    ``consumed``: grant id -> 1/1000 minor units spent (``StoreService.consumed``). Voided,
    expired and not yet effective grants count nothing.
    """
    return sum(remaining_milli(g, consumed.get(g.id, 0)) for g in grants if g.usable(now))


@dataclass(frozen=True, slots=True)
class RechargeRule:
    """When the balance falls below ``threshold``, ask (an event) to top it up to ``target``."""

    customer: str
    threshold: int
    target: int
    set_at: float

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "customer": self.customer,
            "threshold": self.threshold,
            "target": self.target,
            "set_at": self.set_at,
        }


@dataclass(frozen=True, slots=True)
class SpendCap:
    """The customer's own cap on spend in one period (``period``: the period's start date)."""

    customer: str
    period: str
    amount: int
    set_at: float

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "customer": self.customer,
            "period": self.period,
            "amount": self.amount,
            "set_at": self.set_at,
        }
