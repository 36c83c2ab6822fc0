"""Pricing and periods: pure functions, examples and hypothesis properties."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollhouse.billing.periods import period_containing, period_for_label
from tollhouse.billing.pricing import (
    BaseFeeSegment,
    minimum_topup,
    minor_unit,
    price_meter,
    prorate_segments,
    round_money,
)
from tollhouse.billing.subscriptions import segments
from tollhouse.config import MeterPrice, Tier
from tollhouse.subscriber import PlanChange

GRAD = MeterPrice(
    model="graduated",
    included=100,
    tiers=(
        Tier(up_to=1000, unit_price=Decimal("0.01")),
        Tier(up_to=5000, unit_price=Decimal("0.005"), flat_fee=Decimal("2")),
        Tier(unit_price=Decimal("0.001")),
    ),
)
VOL = MeterPrice(model="volume", tiers=GRAD.tiers)


def _ts(*a: int) -> int:
    return int(datetime(*a, tzinfo=UTC).timestamp())  # type: ignore[misc]


def test_per_unit_with_included_units() -> None:
    """Per-unit pricing charges only the units above the included allowance."""
    mp = MeterPrice(model="per_unit", included=100, unit_price=Decimal("0.002"))
    c = price_meter("requests", mp, 1100, "USD")
    assert (c.billable, c.included, c.amount) == (1000, 100, Decimal("2.00"))
    assert price_meter("requests", mp, 50, "USD").amount == Decimal("0.00")


def test_graduated_tiers_split_units() -> None:
    """Graduated pricing charges each tier's units at that tier's price, plus its flat fee."""
    c = price_meter("r", GRAD, 100 + 1500, "USD")
    assert [(t.first, t.last, t.quantity) for t in c.tiers] == [(1, 1000, 1000), (1001, 5000, 500)]
    assert c.amount == Decimal("10.00") + Decimal("2.50") + Decimal("2")


def test_volume_prices_all_units_at_reached_tier() -> None:
    """Volume pricing charges every unit at the price of the tier the total falls in."""
    c = price_meter("r", VOL, 1500, "USD")
    assert c.amount == Decimal("1500") * Decimal("0.005") + 2
    assert price_meter("r", VOL, 0, "USD").amount == 0


def test_package_charges_per_started_block() -> None:
    """Package pricing charges per started block of N units."""
    mp = MeterPrice(model="package", package_size=1000, package_price=Decimal("0.50"))
    assert price_meter("t", mp, 1, "USD").amount == Decimal("0.50")
    assert price_meter("t", mp, 1000, "USD").amount == Decimal("0.50")
    assert price_meter("t", mp, 1001, "USD").amount == Decimal("1.00")
    assert price_meter("t", mp, 0, "USD").amount == 0


def test_currency_minor_units_and_half_even() -> None:
    """Amounts round to the currency's minor unit with ROUND_HALF_EVEN."""
    assert minor_unit("JPY") == 1
    assert minor_unit("KWD") == Decimal("0.001")
    assert round_money(Decimal("0.125"), "USD") == Decimal("0.12")
    assert round_money(Decimal("0.135"), "USD") == Decimal("0.14")
    assert round_money(Decimal("2.5"), "JPY") == Decimal("2")


def test_minimum_topup() -> None:
    """The minimum charge adds the difference up to the minimum, never a negative line."""
    assert minimum_topup(Decimal("3.10"), Decimal("5.00"), "USD") == Decimal("1.90")
    assert minimum_topup(Decimal("7"), Decimal("5.00"), "USD") == Decimal("0.00")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=20_000))
def test_graduated_equals_sum_of_its_tiers(units: int) -> None:
    """Property: a graduated line is the exact sum of its tiers (marginal at every unit)."""
    c = price_meter("r", GRAD, units, "USD")
    assert sum(t.quantity for t in c.tiers) == c.billable
    exact = sum((t.quantity * t.unit_price + t.flat_fee for t in c.tiers), Decimal(0))
    assert c.exact == exact
    assert c.amount == round_money(exact, "USD")


@pytest.mark.parametrize("boundary", [1000, 5000])
def test_graduated_and_volume_exact_at_each_boundary(boundary: int) -> None:
    """At a tier's up_to the unit belongs to that tier; one more unit moves to the next."""
    g_at = price_meter("r", GRAD, boundary + 100, "USD")
    g_next = price_meter("r", GRAD, boundary + 101, "USD")
    assert g_at.tiers[-1].last == boundary
    assert g_next.tiers[-1].first == boundary + 1
    assert g_next.tiers[-1].quantity == 1
    v_at = price_meter("r", VOL, boundary, "USD")
    v_next = price_meter("r", VOL, boundary + 1, "USD")
    tier = {1000: (Decimal("0.01"), 0), 5000: (Decimal("0.005"), 2)}[boundary]
    assert v_at.exact == boundary * tier[0] + tier[1]
    assert v_next.tiers[0].first == boundary + 1


_TIERS = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=10**6),
        st.decimals(min_value=0, max_value=5, places=4),
        st.decimals(min_value=0, max_value=50, places=2),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda t: t[0],
)


def _tiers(raw: list[tuple[int, Decimal, Decimal]], last: Decimal) -> tuple[Tier, ...]:
    ordered = sorted(raw)
    return (
        *(Tier(up_to=u, unit_price=p, flat_fee=f) for u, p, f in ordered),
        Tier(unit_price=last),
    )


@settings(max_examples=200, deadline=None)
@given(_TIERS, st.decimals(min_value=0, max_value=5, places=4))
def test_tier_boundaries_exact(raw: list[tuple[int, Decimal, Decimal]], last: Decimal) -> None:
    """Property: at every boundary b, graduated and volume match a hand sum at b and b + 1."""
    tiers = _tiers(raw, last)
    grad, vol = MeterPrice(model="graduated", tiers=tiers), MeterPrice(model="volume", tiers=tiers)
    cumulative, lower = Decimal(0), 0
    for i, t in enumerate(tiers[:-1]):
        assert t.up_to is not None
        cumulative += (t.up_to - lower) * t.unit_price + t.flat_fee
        nxt = tiers[i + 1]
        assert price_meter("r", grad, t.up_to, "USD").exact == cumulative
        assert (
            price_meter("r", grad, t.up_to + 1, "USD").exact
            == cumulative + nxt.unit_price + nxt.flat_fee
        )
        assert price_meter("r", vol, t.up_to, "USD").exact == t.up_to * t.unit_price + t.flat_fee
        assert (
            price_meter("r", vol, t.up_to + 1, "USD").exact
            == (t.up_to + 1) * nxt.unit_price + nxt.flat_fee
        )
        lower = t.up_to


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=6),
    st.decimals(min_value=0, max_value=10**5, places=2, allow_nan=False),
    st.sampled_from(["USD", "JPY", "KWD"]),
)
def test_proration_of_split_period_sums_to_full_fee(
    cuts: list[int], fee: Decimal, currency: str
) -> None:
    """Property: a period split at any instants prorates to exactly the full fee."""
    total = sum(cuts)
    segs, start = [], 0
    for c in cuts:
        segs.append(BaseFeeSegment("pro", round_money(fee, currency), start, start + c, total))
        start += c
    amounts = prorate_segments(segs, currency)
    assert sum(amounts) == round_money(fee, currency)
    assert all(a >= 0 for a in amounts)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["per_unit", "graduated", "volume", "package"]),
            st.integers(min_value=0, max_value=50_000),
        ),
        min_size=1,
        max_size=5,
    ),
    st.decimals(min_value=0, max_value=1000, places=2),
)
def test_total_equals_sum_of_lines(lines: list[tuple[str, int]], minimum: Decimal) -> None:
    """Property: subtotal and total are the sums of the rounded lines (and the top-up)."""
    prices = {
        "per_unit": MeterPrice(unit_price=Decimal("0.0003")),
        "graduated": GRAD,
        "volume": VOL,
        "package": MeterPrice(model="package", package_size=7, package_price=Decimal("0.333")),
    }
    amounts = [price_meter("m", prices[model], q, "USD").amount for model, q in lines]
    subtotal = sum(amounts, Decimal(0))
    topup = minimum_topup(subtotal, minimum, "USD")
    assert all(a == round_money(a, "USD") for a in amounts)
    assert subtotal + topup == max(subtotal, minimum)


def test_plan_change_segments_and_proration() -> None:
    """A mid-period plan change prorates each plan's fee by the seconds it was in effect."""
    p = period_for_label("2026-11", None)
    mid = p.start_s + p.seconds // 3
    segs = segments([PlanChange("starter", 0), PlanChange("pro", mid)], p)
    assert segs == [("starter", p.start_s, mid), ("pro", mid, p.end_s)]
    fees = {"starter": Decimal("10.00"), "pro": Decimal("49.00")}
    amounts = prorate_segments(
        [BaseFeeSegment(n, fees[n], s, e, p.seconds) for n, s, e in segs], "USD"
    )
    assert amounts == [Decimal("3.33"), Decimal("32.67")]


def test_periods_calendar_and_anniversary() -> None:
    """Periods are UTC calendar months, or anniversaries clamped to the month's last day."""
    assert period_for_label("2026-11", None).start_s == _ts(2026, 11, 1)
    assert period_for_label("2026-12", None).end_s == _ts(2027, 1, 1)
    anchor = date(2026, 1, 31)
    feb = period_for_label("2026-02", anchor)
    assert (feb.start_s, feb.end_s) == (_ts(2026, 2, 28), _ts(2026, 3, 31))
    assert period_containing(_ts(2026, 3, 30), anchor).label == "2026-02"
    assert period_containing(_ts(2026, 3, 31), anchor).label == "2026-03"
    with pytest.raises(ValueError, match="YYYY-MM"):
        period_for_label("2026-13", None)
