"""Billing periods in UTC: calendar months, or monthly anniversaries of an anchor date.

A period is labelled by the month it starts in (``2026-11``). With an anchor date the period starts
on the anchor's day of that month, clamped to the month's last day (anchor ``2026-01-31`` gives
``2026-02-28 .. 2026-03-31``). The boundaries come from :mod:`tollhouse.periods` (one
implementation for quotas and invoices); only the label differs: quota keys an anchored period by
its start date (``2026-11-15``), billing by its start month (``2026-11``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from tollhouse import periods as bounds

__all__ = ["Period", "iso_utc", "parse_anchor", "period_containing", "period_for_label"]

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


def _billing(w: bounds.Period) -> Period:
    return Period(f"{w.start.year:04d}-{w.start.month:02d}", w.start_s, w.end_s)


def period_for_label(label: str, anchor: date | None) -> Period:
    """Return the period labelled ``YYYY-MM``; ``ValueError`` for anything else."""
    m = _LABEL.match(label)
    if m is None or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1970:
        raise ValueError(f"period must be YYYY-MM, got {label!r}")
    year, month = int(m.group(1)), int(m.group(2))
    w = bounds.period_for(datetime(year, month, 1, tzinfo=UTC).timestamp(), anchor)
    if (w.start.year, w.start.month) != (year, month):  # the 1st lies in the previous period
        w = bounds.period_for(w.end_s, anchor)
    return _billing(w)


def period_containing(ts_s: float, anchor: date | None) -> Period:
    """Return the period that contains the instant ``ts_s`` (Unix seconds)."""
    # Whole seconds first: boundaries are whole seconds, and a float a hair below midnight must
    # not be rounded into the next period by datetime's microsecond rounding.
    return _billing(bounds.period_for(int(ts_s // 1), anchor))


def iso_utc(ts_s: float) -> str:
    """``2026-11-03T09:30:00Z``: an instant (Unix seconds) in ISO 8601 UTC, for people."""
    return datetime.fromtimestamp(int(ts_s // 1), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
