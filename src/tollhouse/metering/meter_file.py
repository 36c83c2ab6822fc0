"""Read-only access to the embedded SQLite meter, for readers in other processes.

The sink (:class:`tollhouse.metering.sinks.SqliteMeterSink`) creates the file on its first
batch, and until its schema transaction commits a reader can find the file without the tables
(an empty file, or one with only the WAL header). Readers treat that as an empty meter, never
as an error: :func:`meter_ready` says whether the tables are there yet.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

__all__ = ["METER_TABLES", "connect_ro", "has_tables", "meter_ready"]

METER_TABLES = ("usage", "usage_units")


def connect_ro(path: Path, *, busy_timeout_s: float = 10.0) -> sqlite3.Connection:
    """Open ``path`` read-only (never creates or changes it), usable from any thread."""
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                           timeout=busy_timeout_s)


def has_tables(conn: sqlite3.Connection, *names: str) -> bool:
    """Whether every table in ``names`` exists in ``conn``'s database."""
    marks = ", ".join("?" * len(names))
    row = conn.execute(
        f"SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",  # noqa: S608 - placeholders only
        names).fetchone()
    return int(row[0]) == len(set(names))


def meter_ready(conn: sqlite3.Connection) -> bool:
    """Whether the meter's schema is committed (False while the sink is still creating it)."""
    return has_tables(conn, *METER_TABLES)
