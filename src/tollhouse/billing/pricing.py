"""Pure pricing over integers and Decimal. Never float.

Rounding rule (the invoice follows it exactly):

1. Every amount is computed at full Decimal precision (context precision 50).
2. Each invoice line amount (a meter line, a tier, an adjustment, the minimum top-up) is rounded
   once to the currency's minor unit with ROUND_HALF_EVEN. A line's amount is the rounded sum of
   its tiers' full-precision amounts; the tiers shown are rounded for display only.
3. Base-fee segments of a prorated period use cumulative rounding: segment ``i`` is
   ``round(C_i) - round(C_{i-1})`` where ``C_i`` is the full-precision running sum of the
   segments' fees. So the segments of a period split at any instant sum exactly to the fee.
4. subtotal = sum of rounded lines; total = subtotal + minimum top-up + adjustments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

from tollhouse.config import MeterPrice, Tier

__all__ = [
    "BaseFeeSegment",
    "MeterCharge",
    "TierCharge",
    "minimum_topup",
    "minor_unit",
    "price_meter",
    "prorate_segments",
    "round_money",
]

_ZERO_DECIMAL = frozenset(
    {
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "ISK",
        "JPY",
        "KMF",
        "KRW",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    }
)
_THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})
_CTX = Context(prec=50)
ZERO = Decimal(0)


def minor_unit(currency: str) -> Decimal:
    """Return the smallest amount of ``currency`` (ISO 4217): ``0.01`` for USD, ``1`` for JPY."""
    if currency in _ZERO_DECIMAL:
        return Decimal(1)
    if currency in _THREE_DECIMAL:
        return Decimal("0.001")
    return Decimal("0.01")


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round to the currency's minor unit, ROUND_HALF_EVEN."""
    with localcontext(_CTX):
        return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class TierCharge:
    """Units ``first..last`` (1-based, inclusive, counted after the included allowance)."""

    first: int
    last: int | None
    quantity: int
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal  # rounded for display


@dataclass(frozen=True, slots=True)
class MeterCharge:
    """One meter's usage priced: ``amount`` is rounded to the minor unit."""

    meter: str
    model: str
    quantity: int
    included: int
    billable: int
    unit_price: Decimal | None
    tiers: tuple[TierCharge, ...]
    exact: Decimal  # full precision
    amount: Decimal


def _graduated(tiers: Sequence[Tier], units: int) -> list[tuple[TierCharge, Decimal]]:
    out: list[tuple[TierCharge, Decimal]] = []
    lower = 0
    for t in tiers:
        upper = t.up_to
        if units <= lower:
            break
        qty = (units if upper is None else min(units, upper)) - lower
        exact = qty * t.unit_price + t.flat_fee
        out.append((TierCharge(lower + 1, upper, qty, t.unit_price, t.flat_fee, exact), exact))
        if upper is None:
            break
        lower = upper
    return out


def _volume(tiers: Sequence[Tier], units: int) -> list[tuple[TierCharge, Decimal]]:
    if units <= 0:
        return []
    lower = 0
    for t in tiers:
        if t.up_to is None or units <= t.up_to:
            exact = units * t.unit_price + t.flat_fee
            return [(TierCharge(lower + 1, t.up_to, units, t.unit_price, t.flat_fee, exact), exact)]
        lower = t.up_to
    raise ValueError("volume tiers must end with an unbounded tier")


def price_meter(meter: str, price: MeterPrice, quantity: int, currency: str) -> MeterCharge:
    """Price ``quantity`` units of one meter; the included allowance is free and comes first."""
    if quantity < 0:
        raise ValueError("quantity must be >= 0")
    billable = max(0, quantity - price.included)
    tiers: list[tuple[TierCharge, Decimal]] = []
    with localcontext(_CTX):
        if price.model == "per_unit":
            exact = billable * (price.unit_price or ZERO)
        elif price.model == "package":
            size = price.package_size or 1
            exact = -(-billable // size) * (price.package_price or ZERO)
        elif price.model == "graduated":
            tiers = _graduated(price.tiers, billable)
            exact = sum((e for _, e in tiers), ZERO)
        else:
            tiers = _volume(price.tiers, billable)
            exact = sum((e for _, e in tiers), ZERO)
    shown = tuple(
        TierCharge(
            t.first, t.last, t.quantity, t.unit_price, t.flat_fee, round_money(t.amount, currency)
        )
        for t, _ in tiers
    )
    unit = price.unit_price if price.model == "per_unit" else price.package_price
    return MeterCharge(
        meter,
        price.model,
        quantity,
        min(quantity, price.included),
        billable,
        unit,
        shown,
        exact,
        round_money(exact, currency),
    )


@dataclass(frozen=True, slots=True)
class BaseFeeSegment:
    """``fee`` charged for ``seconds`` of a ``period_seconds`` period (proration)."""

    plan: str
    fee: Decimal
    start_s: int
    end_s: int
    period_seconds: int

    @property
    def seconds(self) -> int:
        """Seconds of the period this segment covers."""
        return self.end_s - self.start_s


def prorate_segments(segments: Sequence[BaseFeeSegment], currency: str) -> list[Decimal]:
    """Return rounded amounts per segment, by cumulative rounding (rule 3 above)."""
    out: list[Decimal] = []
    running = ZERO
    charged = ZERO
    with localcontext(_CTX):
        for s in segments:
            if s.period_seconds <= 0 or s.seconds < 0:
                raise ValueError("segments need positive periods and non-negative lengths")
            running += s.fee * s.seconds / s.period_seconds
            rounded = round_money(running, currency)
            out.append(rounded - charged)
            charged = rounded
    return out


def minimum_topup(subtotal: Decimal, minimum: Decimal, currency: str) -> Decimal:
    """Return the line lifting ``subtotal`` to the plan's ``minimum`` (zero if above it)."""
    return round_money(max(ZERO, minimum - subtotal), currency)
