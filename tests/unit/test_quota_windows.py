"""Billing periods: calendar months and anniversary months in UTC (pure functions)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollhouse.periods import period_for, period_for_key


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def test_calendar_month_bounds_and_key() -> None:
    """Without an anchor the period is the UTC calendar month, keyed YYYY-MM."""
    p = period_for(ts(2026, 11, 15, 12, 30), None)
    assert p.key == "2026-11"
    assert p.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert p.end == datetime(2026, 12, 1, tzinfo=UTC)
    assert (p.start_s, p.end_s) == (int(ts(2026, 11, 1)), int(ts(2026, 12, 1)))
    assert p.length_s == 30 * 86400


def test_calendar_rolls_over_year_at_the_boundary() -> None:
    """The last second of December is in December; the next second starts January."""
    last = period_for(ts(2026, 12, 31, 23, 59, 59), None)
    first = period_for(ts(2027, 1, 1), None)
    assert last.key == "2026-12"
    assert last.end_s == first.start_s
    assert first.key == "2027-01"
    assert first.end == datetime(2027, 2, 1, tzinfo=UTC)


def test_anniversary_period_follows_anchor_day() -> None:
    """An anchor on the 15th gives periods from the 15th to the next month's 15th."""
    anchor = date(2026, 1, 15)
    assert period_for(ts(2026, 11, 20), anchor).key == "2026-11-15"
    before = period_for(ts(2026, 11, 14, 23, 59, 59), anchor)
    assert before.key == "2026-10-15"
    assert before.end == datetime(2026, 11, 15, tzinfo=UTC)
    assert period_for(ts(2026, 11, 15), anchor).key == "2026-11-15"


def test_anchor_on_31st_clamps_to_month_end() -> None:
    """Anchor Jan 31 gives Jan 31 -> Feb 28 -> Mar 31 -> Apr 30 -> May 31."""
    anchor = date(2026, 1, 31)
    p = period_for(ts(2026, 2, 10), anchor)
    keys = []
    for _ in range(5):
        keys.append(p.key)
        p = period_for(p.end_s, anchor)
    assert keys == ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31"]


def test_anchor_on_31st_in_leap_year_uses_feb_29() -> None:
    """In a leap year the Jan 31 anchor's February period starts on the 29th."""
    anchor = date(2025, 1, 31)
    assert period_for(ts(2028, 2, 29, 0, 0, 1), anchor).key == "2028-02-29"
    assert period_for(ts(2028, 2, 28, 23), anchor).key == "2028-01-31"


def test_period_for_key_round_trips_and_rejects_bad_keys() -> None:
    """A period key names exactly one period for its anchor; other strings are errors."""
    anchor = date(2026, 1, 31)
    assert period_for_key("2026-02-28", anchor) == period_for(ts(2026, 3, 1), anchor)
    assert period_for_key("2026-11", None).end == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a period"):
        period_for_key("2026-11-16", date(2026, 1, 15))
    with pytest.raises(ValueError, match="not a period key"):
        period_for_key("november", None)


@given(
    now=st.integers(min_value=int(ts(2000, 1, 1)), max_value=int(ts(2100, 1, 1))),
    anchor=st.none() | st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)),
)
def test_periods_contain_now_and_tile_time(now: int, anchor: date | None) -> None:
    """Every instant lies in its period, and the next period starts where this one ends."""
    p = period_for(now, anchor)
    assert p.start_s <= now < p.end_s
    nxt = period_for(p.end_s, anchor)
    assert nxt.start_s == p.end_s
    assert 28 * 86400 <= p.length_s <= 31 * 86400
