"""SQLite meter -> ledger, batched, exactly once (cursor and inserts share a transaction).

Also the meter-side aggregate used by the live usage endpoint, so it prices exactly what the
invoice would, from the same meter tables (schema in :mod:`tollhouse.metering.schema`).
"""

from __future__ import annotations

from pathlib import Path

from tollhouse.billing.ledger import FailureHook, Ledger, LedgerRow
from tollhouse.billing.metrics import RECORDS_CONSUMED
from tollhouse.config import MeterLocation
from tollhouse.logs import get_logger
from tollhouse.metering.meter_file import connect_ro, meter_ready, verify_rows
from tollhouse.metering.schema import (
    SELECT_DAILY_TOTALS,
    SELECT_ROWS_AFTER,
    SELECT_TOTALS,
    SELECT_UNITS_BETWEEN,
)

__all__ = ["SqliteMeterTotals", "consume_sqlite_meter"]

log = get_logger(__name__)


def _noop(_: str) -> None:
    return None


def consume_sqlite_meter(
    ledger: Ledger, meter: MeterLocation, *, batch: int = 50_000, hook: FailureHook = _noop
) -> int:
    """Copy new rows of the SQLite meter into ``ledger``; return how many meter rows were read."""
    path = meter.sqlite_file().resolve()
    if not path.exists() or not _ready(path):
        log.warning("billing.meter_missing", meter=str(path))
        return 0
    source = f"sqlite:{path}"
    if ledger.dialect == "sqlite":
        n = ledger.copy_sqlite_meter(str(path), source, batch=batch, hook=hook)
    else:
        n = _copy_generic(ledger, path, source, batch, hook)
    RECORDS_CONSUMED.labels("sqlite").inc(n)
    log.info("billing.consumed", source="sqlite", records=n, cursor=ledger.get_cursor(source))
    return n


def _ready(path: Path) -> bool:
    conn = connect_ro(path)
    try:
        return meter_ready(conn)
    finally:
        conn.close()


def _copy_generic(ledger: Ledger, path: Path, source: str, batch: int, hook: FailureHook) -> int:
    meter = connect_ro(path)
    total = 0
    try:
        while True:
            last = ledger.get_cursor(source)
            rows = meter.execute(SELECT_ROWS_AFTER, (last, batch)).fetchall()
            if not rows:
                return total
            top = int(rows[-1][0])
            verify_rows(meter, path, last, top)  # a damaged row: MeterCorrupt, nothing copied
            units: dict[str, list[tuple[str, int]]] = {}
            for uid, m, u in meter.execute(SELECT_UNITS_BETWEEN, (last, top)):
                units.setdefault(str(uid), []).append((str(m), int(u)))
            out = [
                LedgerRow(
                    str(uid),
                    str(c),
                    int(at),
                    bool(b),
                    tuple(sorted(units.get(uid, []))),
                    bytes(rec),
                )
                for _, uid, c, at, b, rec in rows
            ]
            ledger.insert_rows(out, cursor=(source, top), hook=hook)
            total += len(rows)
    finally:
        meter.close()


class SqliteMeterTotals:
    """Billable units per meter straight from a SQLite meter (for ``GET /v1/usage``)."""

    def __init__(self, meter: MeterLocation) -> None:
        self._path = meter.sqlite_file()

    def __call__(self, customer: str, start_ms: int, end_ms: int) -> dict[str, int]:
        """Return ``{meter: units}`` admitted in ``[start_ms, end_ms)`` (blocking: use a thread)."""
        if not self._path.exists():
            return {}
        conn = connect_ro(self._path)
        try:
            if not meter_ready(conn):  # the sink is creating the file: nothing metered yet
                return {}
            rows = conn.execute(SELECT_TOTALS, (customer, start_ms, end_ms)).fetchall()
        finally:
            conn.close()
        return {str(m): int(u) for m, u in rows}

    def daily(self, customer: str, start_ms: int, end_ms: int) -> list[tuple[int, str, int]]:
        """``[(UTC day number, meter, units)]`` admitted in ``[start_ms, end_ms)`` (blocking)."""
        if not self._path.exists():
            return []
        conn = connect_ro(self._path)
        try:
            if not meter_ready(conn):
                return []
            rows = conn.execute(SELECT_DAILY_TOTALS, (customer, start_ms, end_ms)).fetchall()
        finally:
            conn.close()
        return [(int(d), str(m), int(u)) for d, m, u in rows]
