"""The open period priced so far, for the customer-facing ``GET /v1/usage``. Same pricing code.

One model (:class:`UsageReport`), two renderings: JSON (:meth:`UsageReport.to_json`) and the HTML
page (:mod:`tollhouse.billing.usage_page`). The projected total prices each meter's units at the
period's current rate (``used * period / elapsed``, capped at a quota that denies overage), plus
the base fee, lifted to the plan's minimum. A plan with ``shadow_price:`` is also priced with the
named plan's prices, by the same code (:func:`price_open_period`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tollhouse.billing.periods import Period, period_containing
from tollhouse.billing.pricing import BaseFeeSegment, minimum_topup, price_meter, prorate_segments
from tollhouse.billing.subscriptions import ConfigSubscriptions, SubscriptionSource, segments
from tollhouse.config import Config, MeterPrice, PlanConfig, PriceConfig

__all__ = [
    "DailyTotals",
    "DayUsage",
    "InvoiceLink",
    "MeterTotals",
    "MeterUsage",
    "PlanPricing",
    "UsageReport",
    "current_usage",
    "price_open_period",
]

MeterTotals = Callable[[str, int, int], Mapping[str, int]]
"""``(customer, start_ms, end_ms) -> {meter: billable units}``; blocking (call it in a thread)."""
DailyTotals = Callable[[str, int, int], Sequence[tuple[int, str, int]]]
"""``(customer, start_ms, end_ms) -> [(UTC day number since 1970, meter, units)]``; blocking."""

DAY_S = 86_400


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
    projected: int = 0


@dataclass(frozen=True, slots=True)
class DayUsage:
    """Units of one meter admitted on one UTC day of the period."""

    date: str
    meter: str
    units: int


@dataclass(frozen=True, slots=True)
class InvoiceLink:
    """An issued invoice of the customer (the page links its HTML, CSV and JSON)."""

    number: str
    period: str
    issue_date: str
    currency: str
    total: Decimal
    amount_due: Decimal | None = None  # total - prepaid credits applied (None: no credits)

    def links(self) -> dict[str, str]:
        """Paths of the invoice's renderings on the customer listener."""
        return {ext: f"/v1/invoices/{self.number}.{ext}" for ext in ("html", "csv", "json")}

    def to_json(self) -> dict[str, Any]:
        """The invoice as ``GET /v1/usage`` lists it (``amount_due`` only with credits)."""
        out: dict[str, Any] = {
            "number": self.number,
            "period": self.period,
            "issue_date": self.issue_date,
            "currency": self.currency,
            "total": format(self.total, "f"),
            "links": self.links(),
        }
        if self.amount_due is not None:
            out["amount_due"] = format(self.amount_due, "f")
        return out


@dataclass(frozen=True, slots=True)
class PlanPricing:
    """One plan's prices applied to the open period's usage (the real plan's, or a shadow's)."""

    plan: str
    currency: str
    base_fee: Decimal
    meters: tuple[tuple[str, Decimal], ...]  # (meter, charge so far)
    minimum: Decimal
    projected_total: Decimal

    @property
    def charges_so_far(self) -> Decimal:
        """Base fee plus usage charges (the minimum applies only when the period closes)."""
        return self.base_fee + sum((a for _, a in self.meters), Decimal(0))

    def to_json(self) -> dict[str, Any]:
        """The shadow block of the JSON (money as decimal strings)."""
        return {
            "plan": self.plan,
            "currency": self.currency,
            "base_fee": format(self.base_fee, "f"),
            "meters": {m: {"charges": format(a, "f")} for m, a in self.meters},
            "minimum": format(self.minimum, "f"),
            "charges_so_far": format(self.charges_so_far, "f"),
            "projected_total": format(self.projected_total, "f"),
        }


@dataclass(frozen=True, slots=True)
class UsageReport:
    """What a customer sees about the open period.

    ``credit_balance`` is the customer's remaining prepaid credit when the deployment sells
    credits (``None``: no credit to show); ``shadow`` the ``shadow_price:`` plan's amounts.
    """

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
    projected_total: Decimal = Decimal(0)
    shadow: PlanPricing | None = None
    daily: tuple[DayUsage, ...] = ()
    invoices: tuple[InvoiceLink, ...] = ()
    credit_balance: Decimal | None = None

    @property
    def charges_so_far(self) -> Decimal:
        """Base fee plus usage charges (the minimum applies only when the period closes)."""
        return self.base_fee + sum((m.amount for m in self.meters), Decimal(0))

    def to_json(self) -> dict[str, Any]:
        """Return the JSON body of ``GET /v1/usage`` (money as decimal strings)."""
        out: dict[str, Any] = {
            "customer": self.customer,
            "plan": self.plan,
            "currency": self.currency,
            "period": {
                "label": self.period,
                "start": self.period_start_s,
                "end": self.period_end_s,
            },
            "as_of": self.as_of_s,
            "meters": {
                m.meter: {
                    "used": m.used,
                    "quota": m.quota,
                    "remaining": m.remaining,
                    "included": m.included,
                    "included_remaining": m.included_remaining,
                    "charges": format(m.amount, "f"),
                    "projected": m.projected,
                }
                for m in self.meters
            },
            "base_fee": format(self.base_fee, "f"),
            "minimum": format(self.minimum, "f"),
            "charges_so_far": format(self.charges_so_far, "f"),
            "projected_total": format(self.projected_total, "f"),
            "shadow": None if self.shadow is None else self.shadow.to_json(),
            "daily": [{"date": d.date, "meter": d.meter, "units": d.units} for d in self.daily],
            "invoices": [i.to_json() for i in self.invoices],
        }
        if self.credit_balance is not None:
            out["credit_balance"] = format(self.credit_balance, "f")
        return out


@dataclass(frozen=True, slots=True)
class _Usage:
    """The open period's usage, as priced by :func:`price_open_period`."""

    period: Period
    plans: tuple[tuple[str, int, int], ...]  # the subscription's segments of the period
    used: Mapping[str, int]
    projected: Mapping[str, int]
    topups: Mapping[str, int]


def _price(plan: PlanConfig | None) -> PriceConfig:
    return plan.price if plan is not None and plan.price is not None else PriceConfig()


def _meter_price(price: PriceConfig, meter: str, topup: int) -> MeterPrice:
    mp = price.meters.get(meter) or MeterPrice(unit_price=Decimal(0))
    return mp.model_copy(update={"included": mp.included + topup}) if topup else mp


def price_open_period(
    cfg: Config, usage: _Usage, plan_name: str, *, every_segment: bool = False
) -> PlanPricing:
    """Price ``usage`` with ``plan_name``'s prices, by the invoice's pricing code.

    The base fee is prorated over the segments, then each meter is priced (the included
    allowance first); the projected total is lifted to the plan's minimum.

    ``every_segment``: every plan of the period is replaced by ``plan_name`` (a shadow plan, as
    ``tollhouse simulate`` replaces them); else each segment keeps its own plan's base fee.
    """
    price = _price(cfg.plans.get(plan_name))
    segs = [
        BaseFeeSegment(
            plan_name if every_segment else pl,
            _price(cfg.plans.get(plan_name if every_segment else pl)).base_fee,
            s,
            e,
            usage.period.seconds,
        )
        for pl, s, e in usage.plans
    ]
    base = sum(prorate_segments(segs, price.currency), Decimal(0))
    meters, projected = [], base
    for meter in sorted(set(usage.used) | set(price.meters)):
        mp = _meter_price(price, meter, usage.topups.get(meter, 0))
        meters.append(
            (meter, price_meter(meter, mp, usage.used.get(meter, 0), price.currency).amount)
        )
        projected += price_meter(meter, mp, usage.projected.get(meter, 0), price.currency).amount
    projected += minimum_topup(projected, price.minimum, price.currency)
    return PlanPricing(plan_name, price.currency, base, tuple(meters), price.minimum, projected)


def _projected(
    used: Mapping[str, int],
    quotas: Mapping[str, int],
    plan: PlanConfig | None,
    from_s: float,
    now: float,
    p: Period,
) -> dict[str, int]:
    """Units at the end of the period at the current rate (capped at a denying quota)."""
    elapsed = max(1, int(now - from_s))
    left = max(0, p.end_s - int(now))
    out = {}
    for meter, n in used.items():
        est = n + n * left // elapsed
        q = quotas.get(meter)
        if q is not None and (plan is None or plan.overage == "deny"):
            est = min(est, max(q, n))
        out[meter] = est
    return out


def _days(
    daily: Sequence[tuple[int, str, int]], used: Mapping[str, int], now: float
) -> tuple[DayUsage, ...]:
    """Per-day units; what the meter has not recorded yet (live counters ahead) is today's."""
    per: dict[tuple[int, str], int] = {}
    for day, meter, units in daily:
        per[(day, meter)] = per.get((day, meter), 0) + units
    today = int(now) // DAY_S
    for meter, n in used.items():
        behind = n - sum(u for (_, m), u in per.items() if m == meter)
        if behind > 0:
            per[(today, meter)] = per.get((today, meter), 0) + behind
    return tuple(
        DayUsage(datetime.fromtimestamp(d * DAY_S, UTC).strftime("%Y-%m-%d"), m, u)
        for (d, m), u in sorted(per.items())
    )


def current_usage(
    cfg: Config,
    customer: str,
    *,
    totals: MeterTotals,
    clock: Callable[[], float],
    subscriptions: SubscriptionSource | None = None,
    quota_overrides: Mapping[str, int] | None = None,
    daily: DailyTotals | None = None,
) -> UsageReport | None:
    """Price ``customer``'s open period so far; ``None`` for an unknown customer. Blocking.

    The base fee is the period's, prorated as on the invoice from the subscription's start (a
    config customer's ``since:``; without one, and for ``default_plan`` callers, the whole period).
    Top-ups of the period add to both the quota and the included units, as on the invoice;
    ``quota_overrides`` (from the entitlement store) replace the config customer's overrides.
    ``daily`` (per-day units of the meter) feeds the chart.
    """
    subs = subscriptions if subscriptions is not None else ConfigSubscriptions(cfg)
    sub = subs.subscription(customer)
    now = clock()
    if sub is None or not sub.changes:
        return None
    p = period_containing(now, sub.anchor)
    segs = tuple(segments(sub.changes, p))
    # Not started in this period (a later ``since:``): its first plan, and no base fee yet.
    plan_name = segs[-1][0] if segs else sub.changes[0].plan
    plan = cfg.plans.get(plan_name)
    end_ms = min(p.end_ms, int(now * 1000) + 1)
    used = dict(totals(customer, p.start_ms, end_ms))
    if quota_overrides is None:
        quota_overrides = (
            cfg.customers[customer].quota_overrides if customer in cfg.customers else {}
        )
    topups = sub.topups_for(p)
    quotas = {**(plan.quotas if plan is not None else {}), **quota_overrides}
    for meter, units in topups.items():
        if meter in quotas:
            quotas[meter] += units
    from_s = max(p.start_s, segs[0][1]) if segs else p.start_s
    usage = _Usage(p, segs, used, _projected(used, quotas, plan, from_s, now, p), topups)
    real = price_open_period(cfg, usage, plan_name)
    charged = dict(real.meters)
    meters = []
    for meter in sorted(set(used) | set(charged) | set(quotas)):
        q, n = quotas.get(meter), used.get(meter, 0)
        included = _meter_price(_price(plan), meter, topups.get(meter, 0)).included
        meters.append(
            MeterUsage(
                meter,
                n,
                q,
                None if q is None else max(0, q - n),
                included,
                max(0, included - n),
                charged.get(meter, Decimal(0)),
                usage.projected.get(meter, 0),
            )
        )
    shadow = None
    if plan is not None and plan.shadow_price is not None:
        shadow = price_open_period(cfg, usage, plan.shadow_price, every_segment=True)
    days = _days(daily(customer, p.start_ms, end_ms) if daily is not None else (), used, now)
    return UsageReport(
        customer,
        plan_name,
        p.label,
        p.start_s,
        p.end_s,
        int(now),
        real.currency,
        real.base_fee,
        tuple(meters),
        real.minimum,
        real.projected_total,
        shadow,
        days,
    )
