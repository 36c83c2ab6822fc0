"""Build one customer's invoice for one period from the ledger, priced by :mod:`pricing`.

Regular lines cover usage admitted in the period with ledger ``seq <= upto_seq`` (the ledger as it
was when the invoice was built). Adjustment lines cover usage admitted before the period that
reached the ledger after the previous invoice was built (``prev_upto < seq <= upto_seq``): late
usage. Each is priced at the margin of its own period's plan:
``price(billed + late) - price(billed)``.

Plan changes: the base fee is prorated over the plans' segments by seconds; usage of the period is
priced with the plan in effect at the period's end. All plans within a period must share a currency.

Top-ups (from the entitlement store) are extra included units of one meter in one period: they add
to the plan's ``included`` for that period (regular lines and late-usage adjustments alike), and a
line with a top-up shows it as ``topup``.

Prepaid credits (a customer with grants in the store): ``credits`` (applied per grant and in
total, remaining, grants not applied and why) and ``amount_due = total - applied``; see
:mod:`tollhouse.billing.invoice_credits`. Invoices of customers without grants carry neither key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from tollhouse.billing.digest import digest
from tollhouse.billing.invoice_credits import AppliedCredits, apply_credits, charge_buckets
from tollhouse.billing.ledger import Ledger, LineTotal
from tollhouse.billing.periods import Period, period_containing
from tollhouse.billing.pricing import (
    BaseFeeSegment,
    MeterCharge,
    minimum_topup,
    price_meter,
    prorate_segments,
    round_money,
)
from tollhouse.billing.subscriptions import segments
from tollhouse.config import MeterPrice, PlanConfig, PriceConfig
from tollhouse.subscriber import Subscriber

__all__ = ["Invoice", "InvoiceProblem", "build_invoice", "digest", "invoice_number"]

_FREE = PriceConfig()
_EMPTY = LineTotal(0, 0, digest(()))


@dataclass(frozen=True, slots=True)
class InvoiceProblem:
    """Why a customer's invoice could not be built (a value, reported by the job)."""

    customer: str
    message: str


@dataclass(frozen=True, slots=True)
class Invoice:
    """An invoice as a plain JSON-ready document plus what the ledger records on issue."""

    number: str
    customer: str
    period: str
    total: Decimal
    currency: str
    document: dict[str, Any]
    billed: tuple[tuple[str, str, int], ...]  # (period, meter, quantity)
    late_records: int
    amount_due: Decimal = Decimal(0)
    credits: tuple[tuple[str, int], ...] = ()  # (grant id, minor units applied)


def invoice_number(period: str, customer: str) -> str:
    """Return the deterministic invoice number ``TH-2026-11-<customer>``."""
    return f"TH-{period}-{customer}"


def _iso(ts_s: int) -> str:
    return datetime.fromtimestamp(ts_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(ts_s: int) -> str:
    return datetime.fromtimestamp(ts_s, tz=UTC).strftime("%Y-%m-%d")


def _m(d: Decimal) -> str:
    return format(d, "f")


def _price(plans: Mapping[str, PlanConfig], plan: str) -> PriceConfig:
    p = plans.get(plan)
    return _FREE if p is None or p.price is None else p.price


def _charge_doc(c: MeterCharge) -> dict[str, Any]:
    return {
        "meter": c.meter,
        "model": c.model,
        "quantity": c.quantity,
        "included": c.included,
        "billable_quantity": c.billable,
        "unit_price": None if c.unit_price is None else _m(c.unit_price),
        "tiers": [
            {
                "first_unit": t.first,
                "last_unit": t.last,
                "quantity": t.quantity,
                "unit_price": _m(t.unit_price),
                "flat_fee": _m(t.flat_fee),
                "amount": _m(t.amount),
            }
            for t in c.tiers
        ],
        "amount": _m(c.amount),
    }


def _charge(meter: str, price: PriceConfig, qty: int, topup: int = 0) -> MeterCharge:
    mp = price.meters.get(meter)
    if mp is None:  # metered but not priced by this plan: shown, free
        mp = MeterPrice(model="per_unit", unit_price=Decimal(0))
    elif topup:
        mp = mp.model_copy(update={"included": mp.included + topup})
    return price_meter(meter, mp, qty, price.currency)


@dataclass(frozen=True, slots=True)
class BuildInput:
    """Everything :func:`build_invoice` reads besides the ledger.

    ``as_of``: when the invoice is built (the job's clock); grants created or voided later do not
    count (``None``: the period's end).
    """

    plans: Mapping[str, PlanConfig]
    sub: Subscriber
    period: Period
    upto_seq: int
    prev_upto_seq: int
    status: Literal["issued", "preview"]
    as_of: float | None = None


def _base_fees(inp: BuildInput, currency: str) -> tuple[list[dict[str, Any]], Decimal]:
    p = inp.period
    segs = [
        BaseFeeSegment(plan, _price(inp.plans, plan).base_fee, s, e, p.seconds)
        for plan, s, e in segments(inp.sub.changes, p)
    ]
    amounts = prorate_segments(segs, currency)
    lines = []
    for seg, amount in zip(segs, amounts, strict=True):
        prorated = seg.seconds != p.seconds
        lines.append(
            {
                "plan": seg.plan,
                "fee": _m(seg.fee),
                "from": _iso(seg.start_s),
                "to": _iso(seg.end_s),
                "seconds": seg.seconds,
                "period_seconds": p.seconds,
                "prorated": prorated,
                "amount": _m(amount),
            }
        )
    return lines, sum(amounts, Decimal(0))


def _usage_lines(
    ledger: Ledger, inp: BuildInput, price: PriceConfig
) -> tuple[list[dict[str, Any]], Decimal]:
    p, cust = inp.period, inp.sub.id
    totals = ledger.meter_lines(cust, p.start_ms, p.end_ms, max_seq=inp.upto_seq)
    topups = inp.sub.topups_for(p)
    lines, subtotal = [], Decimal(0)
    for meter in sorted(set(totals) | set(price.meters)):
        line = totals.get(meter, _EMPTY)
        qty, records = line.units, line.records
        topup = topups.get(meter, 0) if meter in price.meters else 0
        c = _charge(meter, price, qty, topup)
        doc = _charge_doc(c)
        if topup:
            doc["topup"] = topup
        doc["records"] = records
        mp = price.meters.get(meter)
        doc["package_size"] = mp.package_size if mp is not None and mp.model == "package" else None
        doc["digest"] = line.digest
        lines.append(doc)
        subtotal += c.amount
    return lines, subtotal


def _adjustments(ledger: Ledger, inp: BuildInput, currency: str) -> list[dict[str, Any]] | str:
    cust = inp.sub.id
    out: list[dict[str, Any]] = []
    after = -(2**62)
    while True:
        at = ledger.first_admitted_ms(
            cust,
            inp.period.start_ms,
            min_seq=inp.prev_upto_seq,
            max_seq=inp.upto_seq,
            after_ms=after,
        )
        if at is None:
            return out
        px = period_containing(at // 1000, inp.sub.anchor)
        plan = inp.sub.plan_at(px.end_s - 1) or inp.sub.changes[-1].plan
        price = _price(inp.plans, plan)
        if price.currency != currency:
            return f"late usage of {px.label} is priced in {price.currency}, not {currency}"
        totals = ledger.meter_lines(
            cust, px.start_ms, px.end_ms, min_seq=inp.prev_upto_seq, max_seq=inp.upto_seq
        )
        topups = inp.sub.topups_for(px)
        for meter, line in sorted(totals.items()):
            qty, records = line.units, line.records
            before = ledger.billed_quantity(cust, px.label, meter)
            extra = topups.get(meter, 0)
            delta = (
                _charge(meter, price, before + qty, extra).exact
                - _charge(meter, price, before, extra).exact
            )
            out.append(
                {
                    "period": px.label,
                    "plan": plan,
                    "meter": meter,
                    "quantity": qty,
                    "previously_billed": before,
                    "records": records,
                    "amount": _m(round_money(delta, currency)),
                    "digest": line.digest,
                }
            )
        after = px.end_ms


def _daily(ledger: Ledger, inp: BuildInput) -> list[dict[str, Any]]:
    p = inp.period
    rows = ledger.daily_totals(inp.sub.id, p.start_ms, p.end_ms, inp.upto_seq)
    return [{"date": _day(p.start_s + d * 86400), "meter": m, "units": u} for d, m, u in rows]


def _credits(
    ledger: Ledger, inp: BuildInput, doc: dict[str, Any], total: Decimal, fees: Decimal
) -> AppliedCredits | None:
    """Apply the customer's grants (``None``: it has none, the invoice shows no credits)."""
    if not inp.sub.credit_grants:
        return None
    p = inp.period
    return apply_credits(
        inp.sub.credit_grants,
        currency=doc["currency"],
        start=p.start_s,
        end=p.end_s,
        as_of=p.end_s if inp.as_of is None else inp.as_of,
        total=total,
        buckets=charge_buckets(fees, doc["lines"], doc["adjustments"]),
        used_before=ledger.credits_used(inp.sub.id),
    )


def build_invoice(ledger: Ledger, inp: BuildInput) -> Invoice | InvoiceProblem:
    """Price one customer's period; nothing is written (the job issues it)."""
    cust, p = inp.sub.id, inp.period
    segs = segments(inp.sub.changes, p)
    if not segs:
        return InvoiceProblem(cust, f"no plan in effect during {p.label}")
    plan = segs[-1][0]
    price = _price(inp.plans, plan)
    currencies = {_price(inp.plans, s[0]).currency for s in segs}
    if currencies != {price.currency}:
        return InvoiceProblem(cust, f"plans of {p.label} mix currencies {sorted(currencies)}")
    cur = price.currency
    base, base_total = _base_fees(inp, cur)
    lines, usage_total = _usage_lines(ledger, inp, price)
    adjustments = _adjustments(ledger, inp, cur)
    if isinstance(adjustments, str):
        return InvoiceProblem(cust, adjustments)
    subtotal = base_total + usage_total
    topup = minimum_topup(subtotal, price.minimum, cur)
    adj_total = sum((Decimal(a["amount"]) for a in adjustments), Decimal(0))
    total = subtotal + topup + adj_total
    number = invoice_number(p.label, cust)
    doc: dict[str, Any] = {
        "number": number,
        "status": inp.status,
        "customer": cust,
        "plan": plan,
        "period": p.label,
        "period_start": _iso(p.start_s),
        "period_end": _iso(p.end_s),
        "issue_date": _day(p.end_s),
        "currency": cur,
        "base_fees": base,
        "lines": lines,
        "subtotal": _m(round_money(subtotal, cur)),
        "minimum": _m(round_money(price.minimum, cur)),
        "minimum_topup": _m(topup),
        "adjustments": adjustments,
        "adjustments_total": _m(round_money(adj_total, cur)),
        "total": _m(round_money(total, cur)),
        "daily_usage": _daily(ledger, inp),
        "rounding": "each line rounded to the minor unit, ROUND_HALF_EVEN; total = sum of lines",
    }
    billed = tuple(
        [(p.label, ln["meter"], int(ln["quantity"])) for ln in lines]
        + [(a["period"], a["meter"], int(a["quantity"])) for a in adjustments]
    )
    late = sum(int(a["records"]) for a in adjustments)
    credits = _credits(ledger, inp, doc, total, base_total + topup)
    if credits is None:
        return Invoice(number, cust, p.label, total, cur, doc, billed, late, total)
    doc["credits"], doc["amount_due"] = credits.document, _m(credits.amount_due)
    return Invoice(
        number, cust, p.label, total, cur, doc, billed, late, credits.amount_due, credits.applied
    )
