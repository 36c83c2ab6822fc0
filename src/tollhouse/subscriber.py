"""The one customer type: a :class:`Subscriber` is who is subscribed to what, as one frozen value.

The Check path (entitlements, quota limits, credits, spend caps), ``GET /v1/usage`` and the
billing job all read customers as this value, whatever it came from:

* the config file's ``customers:`` (:meth:`Subscriber.from_config`) and ``default_plan:``
  callers (:meth:`Subscriber.on_default_plan`);
* the entitlement store, through the directory in memory on the Check path
  (``tollhouse.store.directory``) or a full read for the billing job
  (``tollhouse.billing.store_subscriptions``), both building the plan history with
  :func:`plan_history`, so the two agree on when a plan is in effect.

The store's own records (``tollhouse.store.models``: the account with its name and e-mail, the
audited plan-change and top-up rows) stay what the admin API reads and writes; they are turned into
a Subscriber in one place each, never passed down the Check path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from tollhouse.config import CustomerConfig
    from tollhouse.store.credit_models import CreditGrant

__all__ = [
    "NO_UNITS",
    "PlanChange",
    "Source",
    "Status",
    "Subscriber",
    "TopUp",
    "midnight_s",
    "plan_history",
]

Status = Literal["active", "past_due", "suspended", "cancelled"]
Source = Literal["config", "store", "default_plan"]
NO_UNITS: Mapping[str, int] = MappingProxyType({})


class _Span(Protocol):
    """Anything with a start in Unix seconds: a billing period or a quota period."""

    @property
    def start_s(self) -> int: ...


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
class Subscriber:
    """A customer's subscription: plan now and over time, status, limits and prepaid credit.

    ``plan``: the plan in effect when the value was read. ``changes``: the plan history in time
    order (the billing job prorates over it). ``status_since_s``: when ``status`` was set
    (``None``: never changed, as for config customers). ``topups``: extra included units, one
    period each; the directory gives the current period's only, the billing job every period's.
    ``credit_grants``: prepaid grants in consumption order (the Check filters with
    ``usable(now)``; the billing job also reads voided and expired ones). ``spend_cap``: the
    customer's own cap for the current period (minor units); ``recharge``: the auto-recharge
    rule ``(threshold, target)`` in minor units. ``from_first_usage``: the start is not known yet
    (a config customer without ``since:``, a ``default_plan`` caller); the one change is at 0
    until :meth:`starting_at` puts it at the first billable request.
    """

    id: str
    plan: str
    changes: tuple[PlanChange, ...] = ()
    anchor: date | None = None
    status: Status = "active"
    status_since_s: float | None = None
    quota_overrides: Mapping[str, int] = field(default_factory=lambda: NO_UNITS)
    topups: tuple[TopUp, ...] = ()
    credit_grants: tuple[CreditGrant, ...] = ()
    spend_cap: int | None = None
    recharge: tuple[int, int] | None = None
    source: Source = "config"
    from_first_usage: bool = False

    @classmethod
    def from_config(cls, cid: str, c: CustomerConfig) -> Subscriber:
        """A static customer of the config file: one plan, from ``since:`` or the first usage."""
        since = c.since_s
        return cls(
            cid,
            c.plan,
            (PlanChange(c.plan, since or 0),),
            date.fromisoformat(c.period_anchor) if c.period_anchor else None,
            quota_overrides=MappingProxyType(dict(c.quota_overrides))
            if c.quota_overrides
            else NO_UNITS,
            from_first_usage=since is None,
        )

    @classmethod
    def on_default_plan(cls, cid: str, plan: str) -> Subscriber:
        """A caller no one registered, served on the config's ``default_plan``."""
        return cls(cid, plan, (PlanChange(plan, 0),), source="default_plan", from_first_usage=True)

    @property
    def start_s(self) -> int:
        """When the subscription starts: its first plan change (0: the epoch)."""
        return min((c.effective_from_s for c in self.changes), default=0)

    def starting_at(self, start_s: int) -> Subscriber:
        """Return this subscription with its first plan in effect from ``start_s``, known."""
        first, *rest = sorted(self.changes, key=lambda c: c.effective_from_s)
        later = tuple(c for c in rest if c.effective_from_s > start_s)
        return replace(
            self, changes=(PlanChange(first.plan, start_s), *later), from_first_usage=False
        )

    def topups_for(self, period: _Span) -> dict[str, int]:
        """Return ``meter -> extra included units`` for ``period`` (keyed by its start date)."""
        start = datetime.fromtimestamp(period.start_s, UTC).date()
        out: dict[str, int] = {}
        for t in self.topups:
            if t.period_start == start:
                out[t.meter] = out.get(t.meter, 0) + t.units
        return out

    def cancelled_before(self, period: _Span) -> bool:
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


def midnight_s(d: date) -> int:
    """Return 00:00 UTC of ``d`` in Unix seconds."""
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


def plan_history(
    changes: Iterable[tuple[str, float]], anchor: date | None
) -> tuple[PlanChange, ...]:
    """The store's plan changes ``(plan, effective_from)`` as a Subscriber's history.

    Times are truncated to the whole second (proration is by seconds), in time order. The
    subscription starts on its anchor date (the store's "start date"): the first plan is in
    effect from the anchor's midnight UTC when that precedes the first change (the customer's
    creation time), so the first period is not prorated for the hours before the record was made.
    """
    out = [PlanChange(p, math.floor(t)) for p, t in sorted(changes, key=lambda c: c[1])]
    if out and anchor is not None and midnight_s(anchor) < out[0].effective_from_s:
        out[0] = PlanChange(out[0].plan, midnight_s(anchor))
    return tuple(out)
