"""Billing periods in UTC: calendar months, or monthly anniversaries of an anchor date.

A period is labelled by the month it starts in (``2026-11``). With an anchor date the period starts
on the anchor's day of that month, clamped to the month's last day (anchor ``2026-01-31`` gives
``2026-02-28 .. 2026-03-31``). Pure functions; the lead will unify them with ``quota.windows``.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

__all__ = ["Period", "parse_anchor", "period_containing", "period_for_label"]

_LABEL = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, slots=True)
class Period:
    """``[start_s, end_s)`` in Unix seconds (UTC), labelled ``YYYY-MM`` by its first month."""

    label: str
    start_s: int
    end_s: int

    @property
    def seconds(self) -> int:
        """Length of the period in seconds."""
        return self.end_s - self.start_s

    @property
    def start_ms(self) -> int:
        """Start in Unix milliseconds (the meter's unit)."""
        return self.start_s * 1000

    @property
    def end_ms(self) -> int:
        """End (exclusive) in Unix milliseconds."""
        return self.end_s * 1000

    def next(self, anchor: date | None) -> Period:
        """Return the period right after this one."""
        return period_containing(self.end_s, anchor)

    def previous(self, anchor: date | None) -> Period:
        """Return the period right before this one."""
        return period_containing(self.start_s - 1, anchor)


def parse_anchor(text: str | None) -> date | None:
    """``YYYY-MM-DD`` -> date, ``None`` stays ``None`` (calendar months)."""
    return None if text is None else date.fromisoformat(text)


def _start(year: int, month: int, anchor: date | None) -> int:
    day = 1
    if anchor is not None:
        day = min(anchor.day, calendar.monthrange(year, month)[1])
    return int(datetime(year, month, day, tzinfo=UTC).timestamp())


def _shift(year: int, month: int, by: int) -> tuple[int, int]:
    idx = year * 12 + (month - 1) + by
    return idx // 12, idx % 12 + 1


def _make(year: int, month: int, anchor: date | None) -> Period:
    ny, nm = _shift(year, month, 1)
    return Period(f"{year:04d}-{month:02d}", _start(year, month, anchor), _start(ny, nm, anchor))


def period_for_label(label: str, anchor: date | None) -> Period:
    """Return the period labelled ``YYYY-MM``; ``ValueError`` for anything else."""
    m = _LABEL.match(label)
    if m is None or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1970:
        raise ValueError(f"period must be YYYY-MM, got {label!r}")
    return _make(int(m.group(1)), int(m.group(2)), anchor)


def period_containing(ts_s: float, anchor: date | None) -> Period:
    """Return the period that contains the instant ``ts_s`` (Unix seconds)."""
    dt = datetime.fromtimestamp(int(ts_s // 1), tz=UTC)
    p = _make(dt.year, dt.month, anchor)
    if ts_s < p.start_s:
        y, m = _shift(dt.year, dt.month, -1)
        p = _make(y, m, anchor)
    return p
