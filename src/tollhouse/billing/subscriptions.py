"""Who is subscribed to which plan, since when: the input to proration.

:class:`SubscriptionSource` is what the billing job reads. :class:`ConfigSubscriptions` serves it
from ``Config.customers`` (one plan, from ``since:``, else from the first usage) and
``default_plan`` (from the first usage);
:class:`tollhouse.billing.store_subscriptions.StoreSubscriptions` serves it from the entitlement
store (plan changes with their effective times, status, top-ups), falling back to the config.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Protocol

from tollhouse.billing.periods import Period, parse_anchor
from tollhouse.config import Config
from tollhouse.store.credit_models import CreditGrant

__all__ = [
    "ConfigSubscriptions",
    "PlanChange",
    "Subscription",
    "SubscriptionSource",
    "TopUp",
    "segments",
]


@dataclass(frozen=True, slots=True)
class PlanChange:
    """From ``effective_from_s`` (Unix seconds, UTC) on, the customer is on ``plan``."""

    plan: str
    effective_from_s: int


@dataclass(frozen=True, slots=True)
class TopUp:
    """``units`` extra included units of ``meter`` in the period that starts on ``period_start``."""

    period_start: date
    meter: str
    units: int


@dataclass(frozen=True, slots=True)
class Subscription:
    """A customer's plan history (sorted by time) and period anchor (``None``: calendar months).

    ``status`` / ``status_since_s`` as in the entitlement store (config customers: always active);
    ``topups`` add included units to one period each; ``grants``: the customer's prepaid credit
    grants (voided and expired included; applied on invoices by
    :mod:`tollhouse.billing.invoice_credits`). ``from_first_usage``: the start is not
    known yet (a config customer without ``since:``, a ``default_plan`` caller): the one change
    is at 0 until :meth:`starting_at` puts it at the customer's first billable request.
    """

    customer: str
    changes: tuple[PlanChange, ...]
    anchor: date | None = None
    status: str = "active"
    status_since_s: int | None = None
    topups: tuple[TopUp, ...] = ()
    from_first_usage: bool = False
    grants: tuple[CreditGrant, ...] = ()

    @property
    def start_s(self) -> int:
        """When the subscription starts: its first plan change (0: the epoch)."""
        return min((c.effective_from_s for c in self.changes), default=0)

    def starting_at(self, start_s: int) -> Subscription:
        """Return this subscription with its first plan in effect from ``start_s``, known."""
        first, *rest = sorted(self.changes, key=lambda c: c.effective_from_s)
        later = tuple(c for c in rest if c.effective_from_s > start_s)
        return replace(
            self, changes=(PlanChange(first.plan, start_s), *later), from_first_usage=False
        )

    def topups_for(self, period: Period) -> dict[str, int]:
        """Return ``meter -> extra included units`` for ``period`` (keyed by its start date)."""
        start = datetime.fromtimestamp(period.start_s, UTC).date()
        out: dict[str, int] = {}
        for t in self.topups:
            if t.period_start == start:
                out[t.meter] = out.get(t.meter, 0) + t.units
        return out

    def cancelled_before(self, period: Period) -> bool:
        """Tell whether the subscription was cancelled at or before ``period`` started."""
        return (
            self.status == "cancelled"
            and self.status_since_s is not None
            and self.status_since_s <= period.start_s
        )

    def plan_at(self, ts_s: int) -> str | None:
        """Return the plan in effect at ``ts_s``, or ``None`` before the first change."""
        current = None
        for c in self.changes:
            if c.effective_from_s <= ts_s:
                current = c.plan
        return current


class SubscriptionSource(Protocol):
    """Where subscriptions come from (the config file, or the entitlement store)."""

    def customers(self) -> Iterable[str]:
        """Every customer that may be billed."""
        ...

    def subscription(self, customer: str) -> Subscription | None:
        """Return the customer's subscription, or ``None`` when unknown."""
        ...


class ConfigSubscriptions:
    """Subscriptions from ``Config.customers`` and ``default_plan``: one plan each.

    A customer with ``since:`` starts then; one without, and a ``default_plan`` caller, is
    ``from_first_usage`` (the billing job starts it at its first billable request in the ledger;
    ``GET /v1/usage`` treats it as in effect for the whole open period).
    """

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg

    def customers(self) -> Iterable[str]:
        """Return the configured customers, sorted."""
        return sorted(self._cfg.customers)

    def subscription(self, customer: str) -> Subscription | None:
        """Return a single-plan subscription (``default_plan`` for unknown customers, if set)."""
        c = self._cfg.customers.get(customer)
        if c is not None:
            since = c.since_s
            return Subscription(
                customer,
                (PlanChange(c.plan, since or 0),),
                parse_anchor(c.period_anchor),
                from_first_usage=since is None,
            )
        if self._cfg.default_plan is not None:
            return Subscription(
                customer, (PlanChange(self._cfg.default_plan, 0),), None, from_first_usage=True
            )
        return None


def segments(changes: Sequence[PlanChange], period: Period) -> list[tuple[str, int, int]]:
    """``(plan, start_s, end_s)`` pieces of ``period``, one per plan in effect, in time order."""
    out: list[tuple[str, int, int]] = []
    ordered = sorted(changes, key=lambda c: c.effective_from_s)
    for i, c in enumerate(ordered):
        nxt = ordered[i + 1].effective_from_s if i + 1 < len(ordered) else period.end_s
        start, end = max(c.effective_from_s, period.start_s), min(nxt, period.end_s)
        if start < end:
            if out and out[-1][0] == c.plan:
                out[-1] = (c.plan, out[-1][1], end)
            else:
                out.append((c.plan, start, end))
    return out
