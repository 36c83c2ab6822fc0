"""The open period priced so far, for the customer-facing ``GET /v1/usage``. Same pricing code."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tollhouse.billing.periods import period_containing
from tollhouse.billing.pricing import BaseFeeSegment, price_meter, prorate_segments
from tollhouse.billing.subscriptions import ConfigSubscriptions, SubscriptionSource, segments
from tollhouse.config import Config, MeterPrice, PriceConfig

__all__ = ["MeterTotals", "MeterUsage", "UsageReport", "current_usage"]

MeterTotals = Callable[[str, int, int], Mapping[str, int]]
"""``(customer, start_ms, end_ms) -> {meter: billable units}``; blocking (call it in a thread)."""


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One meter of the open period: used, allowance left, charge so far."""

    meter: str
    used: int
    quota: int | None
    remaining: int | None
    included: int
    included_remaining: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class UsageReport:
    """What a customer sees about the open period."""

    customer: str
    plan: str
    period: str
    period_start_s: int
    period_end_s: int
    as_of_s: int
    currency: str
    base_fee: Decimal
    meters: tuple[MeterUsage, ...]
    minimum: Decimal

    @property
    def charges_so_far(self) -> Decimal:
        """Base fee plus usage charges (the minimum applies only when the period closes)."""
        return self.base_fee + sum((m.amount for m in self.meters), Decimal(0))

    def to_json(self) -> dict[str, Any]:
        """Return the JSON body of ``GET /v1/usage`` (money as decimal strings)."""
        return {
            "customer": self.customer, "plan": self.plan, "currency": self.currency,
            "period": {"label": self.period, "start": self.period_start_s,
                       "end": self.period_end_s},
            "as_of": self.as_of_s,
            "meters": {m.meter: {"used": m.used, "quota": m.quota, "remaining": m.remaining,
                                 "included": m.included,
                                 "included_remaining": m.included_remaining,
                                 "charges": format(m.amount, "f")} for m in self.meters},
            "base_fee": format(self.base_fee, "f"),
            "minimum": format(self.minimum, "f"),
            "charges_so_far": format(self.charges_so_far, "f"),
        }


def current_usage(cfg: Config, customer: str, *, totals: MeterTotals, clock: Callable[[], float],
                  subscriptions: SubscriptionSource | None = None,
                  quota_overrides: Mapping[str, int] | None = None) -> UsageReport | None:
    """Price ``customer``'s open period so far; ``None`` for an unknown customer. Blocking.

    The base fee is the period's, prorated as on the invoice from the subscription's start (a
    config customer's ``since:``; without one, and for ``default_plan`` callers, the whole period).
    Top-ups of the period add to both the quota and the included units, as on the invoice;
    ``quota_overrides`` (from the entitlement store) replace the config customer's overrides.
    """
    subs = subscriptions if subscriptions is not None else ConfigSubscriptions(cfg)
    sub = subs.subscription(customer)
    now = clock()
    if sub is None:
        return None
    p = period_containing(now, sub.anchor)
    segs = segments(sub.changes, p)
    if not sub.changes:
        return None
    # Not started in this period (a later ``since:``): its first plan, and no base fee yet.
    plan_name = segs[-1][0] if segs else sub.changes[0].plan
    plan = cfg.plans.get(plan_name)
    price = plan.price if plan is not None and plan.price is not None else PriceConfig()
    fees = prorate_segments(
        [BaseFeeSegment(pl, _fee(cfg, pl), s, e, p.seconds) for pl, s, e in segs], price.currency)
    used = totals(customer, p.start_ms, min(p.end_ms, int(now * 1000) + 1))
    if quota_overrides is None:
        quota_overrides = (cfg.customers[customer].quota_overrides
                           if customer in cfg.customers else {})
    topups = sub.topups_for(p)
    quotas = {**(plan.quotas if plan is not None else {}), **quota_overrides}
    for meter, units in topups.items():
        if meter in quotas:
            quotas[meter] += units
    meters = []
    for meter in sorted(set(used) | set(price.meters) | set(quotas)):
        mp = price.meters.get(meter) or MeterPrice(unit_price=Decimal(0))
        q, n = quotas.get(meter), used.get(meter, 0)
        included = mp.included + topups.get(meter, 0)
        if topups.get(meter):
            mp = mp.model_copy(update={"included": included})
        charge = price_meter(meter, mp, n, price.currency)
        meters.append(MeterUsage(meter, n, q, None if q is None else max(0, q - n), included,
                                 max(0, included - n), charge.amount))
    return UsageReport(customer, plan_name, p.label, p.start_s, p.end_s, int(now),
                       price.currency, sum(fees, Decimal(0)), tuple(meters), price.minimum)


def _fee(cfg: Config, plan: str) -> Decimal:
    p = cfg.plans.get(plan)
    return Decimal(0) if p is None or p.price is None else p.price.base_fee
