"""The embedded limiter's counter file: SQLite, one row per (customer, meter, period).

Only the limiter's background writer touches it (through ``asyncio.to_thread``), one call at a
time; the Check path never does. WAL with ``synchronous=FULL``: a commit is on disk when
:meth:`CounterFile.write` returns. A row holds the units to count as used after a restart: for
a request-counted meter the leased ceiling (at least what was admitted), for the others the
units last written (see ``docs/quota.md`` for the bounds).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from tollhouse.sqlite import connect as sqlite_connect

__all__ = ["CounterFile", "CounterFileError", "Row"]

# (customer, meter, period key, period end_s, units)
Row = tuple[str, str, str, int, int]
RETAIN_S = 86_400  # rows outlive their period by a day, then are deleted at the next open

_DDL = """
CREATE TABLE IF NOT EXISTS counters (
    customer TEXT NOT NULL,
    meter    TEXT NOT NULL,
    period   TEXT NOT NULL,
    end_s    INTEGER NOT NULL,
    units    INTEGER NOT NULL,
    PRIMARY KEY (customer, meter, period)
) WITHOUT ROWID
"""
_UPSERT = """
INSERT INTO counters (customer, meter, period, end_s, units) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (customer, meter, period) DO UPDATE SET units = excluded.units
"""


class CounterFileError(OSError):
    """The counter file cannot be opened, read or written (the message names the file).

    An OSError, so ``tollhouse serve`` reports it as ``cannot start: ...`` and exits 2.
    """


class CounterFile:
    """Open, read and write the counter file (blocking calls: run them in a thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def open(self, now_s: float) -> dict[tuple[str, str], dict[str, int]]:
        """Create or open the file; ``(customer, period key) -> {meter: units}`` still current."""
        try:
            conn = sqlite_connect(self.path)
            conn.execute(_DDL)
            conn.execute("DELETE FROM counters WHERE end_s < ?", (int(now_s) - RETAIN_S,))
            rows = conn.execute("SELECT customer, meter, period, units FROM counters").fetchall()
        except (sqlite3.Error, OSError) as e:
            raise CounterFileError(f"cannot open the counter file {self.path}: {e}") from e
        self._conn = conn
        out: dict[tuple[str, str], dict[str, int]] = {}
        for customer, meter, period, units in rows:
            out.setdefault((customer, period), {})[meter] = int(units)
        return out

    def write(self, rows: Sequence[Row]) -> None:
        """Upsert ``rows`` in one transaction, durable when this returns."""
        if self._conn is None:
            raise CounterFileError(f"the counter file {self.path} is not open")
        try:
            with self._conn:  # BEGIN ... COMMIT (ROLLBACK on error)
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(_UPSERT, rows)
        except sqlite3.Error as e:
            raise CounterFileError(f"cannot write the counter file {self.path}: {e}") from e

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
