"""Plain values of prepaid credits: grants, the auto-recharge rule, and a customer's spend cap.

Amounts are integer minor units of the grant's currency (``100`` is 1.00 USD, 100 JPY).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["GRANT_SOURCES", "CreditGrant", "GrantSource", "RechargeRule", "SpendCap",
           "grant_order"]

GrantSource = Literal["purchase", "promotional", "refund"]
GRANT_SOURCES: tuple[GrantSource, ...] = ("purchase", "promotional", "refund")


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
        return (self.voided_at is None and self.effective_at <= now
                and (self.expires_at is None or now < self.expires_at))

    def covers(self, meter: str, feature: str) -> bool:
        """Whether spend on ``meter`` through ``feature`` may use this grant."""
        return ((not self.meters or meter in self.meters)
                and (not self.features or feature in self.features))

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form (admin API, audit log)."""
        return {
            "id": self.id, "customer": self.customer, "amount": self.amount,
            "currency": self.currency, "priority": self.priority,
            "effective_at": self.effective_at, "expires_at": self.expires_at,
            "scope": {"meters": sorted(self.meters), "features": sorted(self.features)},
            "source": self.source, "voided_at": self.voided_at, "created_at": self.created_at,
        }


def grant_order(g: CreditGrant) -> tuple[int, float, float, str]:
    """Sort key: priority, then the earliest expiry (none: last), then age, then id."""
    return (g.priority, math.inf if g.expires_at is None else g.expires_at, g.created_at, g.id)


@dataclass(frozen=True, slots=True)
class RechargeRule:
    """When the balance falls below ``threshold``, ask (an event) to top it up to ``target``."""

    customer: str
    threshold: int
    target: int
    set_at: float

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"customer": self.customer, "threshold": self.threshold, "target": self.target,
                "set_at": self.set_at}


@dataclass(frozen=True, slots=True)
class SpendCap:
    """The customer's own cap on spend in one period (``period``: the period's start date)."""

    customer: str
    period: str
    amount: int
    set_at: float

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"customer": self.customer, "period": self.period, "amount": self.amount,
                "set_at": self.set_at}
