"""Read-only access to the embedded SQLite meter, for readers in other processes.

The sink (:class:`tollhouse.metering.sinks.SqliteMeterSink`) creates the file on its first
batch, and until its schema transaction commits a reader can find the file without the tables
(an empty file, or one with only the WAL header). Readers treat that as an empty meter, never
as an error: :func:`meter_ready` says whether the tables are there yet.

SQLite keeps no checksums: a flipped bit in a data page can leave a file that reads without
error but says another customer, time or quantity. Every row also holds its serialized
``UsageRecord``, so :func:`verify_rows` checks the columns a reader bills from against it and
raises :class:`MeterCorrupt` on the first row that disagrees (see docs/metering.md, "A damaged
meter").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from google.protobuf.message import DecodeError

from tollhouse.metering.schema import (
    METER_TABLES,
    SELECT_ROWS_BETWEEN,
    SELECT_UNITS_BETWEEN,
    UsageRecord,
)
from tollhouse.sqlite import connect_existing

__all__ = ["METER_TABLES", "MeterCorrupt", "connect_ro", "has_tables", "meter_ready", "verify_rows"]


def connect_ro(path: Path, *, busy_timeout_s: float = 10.0) -> sqlite3.Connection:
    """Open ``path`` read-only (never creates or changes it), usable from any thread."""
    return connect_existing(path, timeout_s=busy_timeout_s)


def has_tables(conn: sqlite3.Connection, *names: str) -> bool:
    """Whether every table in ``names`` exists in ``conn``'s database."""
    marks = ", ".join("?" * len(names))
    row = conn.execute(
        f"SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",  # noqa: S608 - placeholders only
        names,
    ).fetchone()
    return int(row[0]) == len(set(names))


def meter_ready(conn: sqlite3.Connection) -> bool:
    """Whether the meter's schema is committed (False while the sink is still creating it)."""
    return has_tables(conn, *METER_TABLES)


class MeterCorrupt(sqlite3.DatabaseError):
    """A meter row whose columns disagree with its own serialized record: the file is damaged."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


_NAMES = ("usage_id", "customer", "admitted_at_ms", "billable")


def verify_rows(conn: sqlite3.Connection, path: Path, last: int, top: int) -> int:
    """Check meter rows with ``last < id <= top`` against their records; return how many.

    Compared: usage id, customer, admission time, ``billable`` and the units of every meter
    (``usage_units``), i.e. everything the ledger copies. Raises :class:`MeterCorrupt`.
    """
    units: dict[object, dict[object, object]] = {}
    for uid, meter, n in conn.execute(SELECT_UNITS_BETWEEN, (last, top)):
        units.setdefault(uid, {})[meter] = n
    count = 0
    for row_id, uid, customer, at_ms, billable, blob in conn.execute(
        SELECT_ROWS_BETWEEN, (last, top)
    ):
        problem = _row_problem((uid, customer, at_ms, billable), blob, units.get(uid, {}))
        if problem is not None:
            raise MeterCorrupt(path, f"meter row {row_id} (usage id {uid!r}): {problem}")
        count += 1
    return count


def _row_problem(
    columns: tuple[object, ...], blob: object, units: Mapping[object, object]
) -> str | None:
    if not isinstance(blob, bytes):
        return "its record is not a blob"
    try:
        rec = UsageRecord.FromString(blob)
    except DecodeError:
        return "its record does not decode"
    want = (rec.usage_id, rec.customer, rec.admitted_at_ms, int(rec.billable))
    if columns != want:
        for name, got, expected in zip(_NAMES, columns, want, strict=True):
            if got != expected:
                return f"column {name} is {got!r}, its record says {expected!r}"
    mine = rec.units
    if len(mine) != len(units) or any(mine.get(str(k)) != n for k, n in units.items()):
        return f"usage_units say {dict(units)!r}, its record says {dict(mine)!r}"
    return None
