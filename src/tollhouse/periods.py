"""Billing periods in UTC: calendar months, or anniversary months anchored to a subscription date.

Pure functions, no I/O: the Check path (quotas) and the billing job (invoices) both use them, so a
request and its invoice always agree on which period a timestamp belongs to.

* No anchor: the calendar month, ``[YYYY-MM-01T00:00Z, next month's 1st)``, key ``"2026-11"``.
* Anchor ``2026-01-15``: ``[YYYY-MM-15T00:00Z, next month's 15th)``, key ``"2026-11-15"`` (the
  start date). The anchor's day is clamped to the month's last day, so an anchor on the 31st gives
  periods starting Jan 31, Feb 28 (29 in leap years), Mar 31, Apr 30, ...
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime

__all__ = ["Period", "period_for", "period_for_key", "roll"]


@dataclass(frozen=True, slots=True)
class Period:
    """One billing period ``[start, end)``: UTC datetimes, the same as epoch seconds, and a key."""

    start: datetime
    end: datetime
    start_s: int
    end_s: int
    key: str

    @property
    def length_s(self) -> int:
        """Length of the period in seconds."""
        return self.end_s - self.start_s

    def contains(self, now_s: float) -> bool:
        """Tell whether ``now_s`` lies in ``[start, end)``."""
        return self.start_s <= now_s < self.end_s


def _shift(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def _clamped(year: int, month: int, day: int) -> date:
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _make(start: date, end: date, key: str) -> Period:
    s, e = _midnight(start), _midnight(end)
    return Period(s, e, int(s.timestamp()), int(e.timestamp()), key)


def period_for(now_s: float, anchor: date | None) -> Period:
    """Return the period containing ``now_s``: calendar month, or anniversary of ``anchor``."""
    now = datetime.fromtimestamp(now_s, UTC)
    if anchor is None:
        ny, nm = _shift(now.year, now.month, 1)
        key = f"{now.year:04d}-{now.month:02d}"
        return _make(date(now.year, now.month, 1), date(ny, nm, 1), key)
    year, month = now.year, now.month
    start = _clamped(year, month, anchor.day)
    if now.date() < start:
        year, month = _shift(year, month, -1)
        start = _clamped(year, month, anchor.day)
    ny, nm = _shift(year, month, 1)
    return _make(start, _clamped(ny, nm, anchor.day), start.isoformat())


def period_for_key(key: str, anchor: date | None) -> Period:
    """Return the period named ``key`` (``2026-11``, ``2026-11-15``); ValueError if none."""
    try:
        parts = [int(p) for p in key.split("-")]
        first = date(parts[0], parts[1], parts[2] if len(parts) == 3 else 1)
    except (ValueError, IndexError):
        raise ValueError(f"not a period key: {key!r}") from None
    period = period_for(_midnight(first).timestamp(), anchor)
    if period.key != key:
        raise ValueError(f"{key!r} is not a period for anchor {anchor}")
    return period


def roll(
    period: Period, anchor: date | None, new_anchor: date | None, now_s: float
) -> tuple[Period, bool] | None:
    """Move a customer's period on if it must.

    ``None`` while ``period`` still holds at ``now_s`` with the same anchor; else ``(the period
    now, whether usage starts again from zero)``.
    """
    if anchor == new_anchor and period.contains(now_s):
        return None
    current = period_for(now_s, new_anchor)
    return current, current.key != period.key
