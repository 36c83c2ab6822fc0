"""The billing ledger: every usage_id at most once, meter cursors, issued invoices. SQLite or PG.

Tables (same shape in both dialects):

- ``ledger_usage``: one row per usage_id ever seen (``seq`` is the ledger's own arrival order);
- ``ledger_units``: billable units per (usage_id, meter), denormalised for streaming aggregates;
- ``meter_cursor``: the last SQLite-meter ``id`` copied, updated in the same transaction;
- ``invoices``: issued invoices (the canonical JSON document) with ``upto_seq``, the last ledger
  ``seq`` they cover;
- ``billed``: quantities billed per (customer, period, meter), late ones included.

Synchronous on purpose: the billing job is its own process; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tollhouse.config import sqlite_path

__all__ = ["FailureHook", "Ledger", "LedgerRow", "open_ledger"]

FailureHook = Callable[[str], None]
"""Called with ``"before_commit"`` / ``"after_commit"``; tests raise from it to simulate a crash."""

_DDL = """
CREATE TABLE IF NOT EXISTS ledger_usage (
    seq {serial},
    usage_id TEXT NOT NULL UNIQUE,
    customer TEXT NOT NULL,
    admitted_at_ms BIGINT NOT NULL,
    billable INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_units (
    usage_id TEXT NOT NULL,
    meter TEXT NOT NULL,
    units BIGINT NOT NULL,
    customer TEXT NOT NULL,
    admitted_at_ms BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (usage_id, meter)
){without_rowid};
CREATE INDEX IF NOT EXISTS ledger_units_cust_time
    ON ledger_units (customer, admitted_at_ms, meter, units, seq);
CREATE TABLE IF NOT EXISTS meter_cursor (source TEXT PRIMARY KEY, last_id BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS invoices (
    number TEXT PRIMARY KEY,
    customer TEXT NOT NULL,
    period TEXT NOT NULL,
    upto_seq BIGINT NOT NULL,
    document TEXT NOT NULL,
    UNIQUE (customer, period)
);
CREATE TABLE IF NOT EXISTS billed (
    invoice TEXT NOT NULL,
    customer TEXT NOT NULL,
    period TEXT NOT NULL,
    meter TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    PRIMARY KEY (invoice, period, meter)
);
"""

_INSERT_USAGE = ("INSERT INTO ledger_usage (usage_id, customer, admitted_at_ms, billable) "
                 "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
_INSERT_UNITS = ("INSERT INTO ledger_units (usage_id, meter, units, customer, admitted_at_ms, seq) "
                 "SELECT usage_id, ?, ?, customer, admitted_at_ms, seq FROM ledger_usage "
                 "WHERE usage_id = ? AND billable = 1 ON CONFLICT DO NOTHING")
_SET_CURSOR = ("INSERT INTO meter_cursor (source, last_id) VALUES (?, ?) "
               "ON CONFLICT (source) DO UPDATE SET last_id = excluded.last_id")

_IDS_SQLITE = ("SELECT usage_id FROM ledger_units WHERE customer = ? AND meter = ? AND"
               " admitted_at_ms >= ? AND admitted_at_ms < ? AND seq > ? AND seq <= ?"
               " ORDER BY usage_id")  # BINARY collation: byte order
_IDS_PG = _IDS_SQLITE + ' COLLATE "C"'  # byte order, whatever the database's locale


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One usage record as the ledger stores it."""

    usage_id: str
    customer: str
    admitted_at_ms: int
    billable: bool
    units: tuple[tuple[str, int], ...] = field(default=())


def _noop(_: str) -> None:
    return None


class Ledger:
    """A ledger store over one DB-API connection; build it with :func:`open_ledger`."""

    def __init__(self, conn: Any, dialect: Literal["sqlite", "postgres"]) -> None:
        self.conn = conn
        self.dialect = dialect
        with self.transaction():
            for stmt in _DDL.split(";"):
                if stmt.strip():
                    self._exec(stmt.format(serial=self._serial(), without_rowid=(
                        " WITHOUT ROWID" if dialect == "sqlite" else "")))

    def _serial(self) -> str:
        return ("INTEGER PRIMARY KEY AUTOINCREMENT" if self.dialect == "sqlite"
                else "BIGSERIAL PRIMARY KEY")

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else sql.replace("?", "%s")

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self._sql(sql), params)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._exec(sql, params).fetchone()

    def transaction(self) -> AbstractContextManager[None]:
        """One atomic unit: commit on success, roll back on any exception."""
        return self._tx()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        if self.dialect == "postgres":
            with self.conn.transaction():
                yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # -- ingest ---------------------------------------------------------------------------------

    def insert_rows(self, rows: Sequence[LedgerRow], *, cursor: tuple[str, int] | None = None,
                    hook: FailureHook = _noop) -> int:
        """Insert ``rows`` (duplicates ignored) and move ``cursor`` in one transaction.

        Returns how many rows were new. ``hook`` runs just before and just after the commit.
        """
        with self.transaction():
            if self.dialect == "postgres":  # serialise writers: seq order == commit order
                self._exec("LOCK TABLE ledger_usage IN EXCLUSIVE MODE")
            cur = self.conn.cursor()
            cur.executemany(self._sql(_INSERT_USAGE),
                            [(r.usage_id, r.customer, r.admitted_at_ms, int(r.billable))
                             for r in rows])
            new = max(0, int(cur.rowcount))
            cur.executemany(self._sql(_INSERT_UNITS),
                            [(m, u, r.usage_id) for r in rows for m, u in r.units])
            if cursor is not None:
                self._exec(_SET_CURSOR, cursor)
            hook("before_commit")
        hook("after_commit")
        return new

    def copy_sqlite_meter(self, meter_path: str, source: str, *, batch: int = 50_000,
                          hook: FailureHook = _noop) -> int:
        """SQLite ledger only: copy meter rows past the cursor with INSERT ... SELECT, batched.

        Each batch inserts and moves the cursor in one transaction (exactly once). Returns the
        number of meter rows read.
        """
        if self.dialect != "sqlite":
            raise ValueError("copy_sqlite_meter needs a SQLite ledger")
        uri = "file:" + urllib.parse.quote(str(Path(meter_path).resolve())) + "?mode=ro"
        self.conn.execute("ATTACH DATABASE ? AS m", (uri,))
        try:
            return self._copy_batches(source, batch, hook)
        finally:
            self.conn.execute("DETACH DATABASE m")

    def _copy_batches(self, source: str, batch: int, hook: FailureHook) -> int:
        total = 0
        while True:
            last = self.get_cursor(source)
            top = self._one("SELECT MAX(id) FROM (SELECT id FROM m.usage WHERE id > ? "
                            "ORDER BY id LIMIT ?)", (last, batch))[0]
            if top is None:
                return total
            with self.transaction():
                self._exec("INSERT INTO ledger_usage (usage_id, customer, admitted_at_ms, billable)"
                           " SELECT usage_id, customer, admitted_at_ms, billable FROM m.usage"
                           " WHERE id > ? AND id <= ? ORDER BY id ON CONFLICT DO NOTHING",
                           (last, top))
                self._exec("INSERT INTO ledger_units (usage_id, meter, units, customer,"
                           " admitted_at_ms, seq) SELECT l.usage_id, uu.meter, uu.units,"
                           " l.customer, l.admitted_at_ms, l.seq FROM m.usage u"
                           " JOIN m.usage_units uu ON uu.usage_id = u.usage_id"
                           " JOIN ledger_usage l ON l.usage_id = u.usage_id"
                           " WHERE u.id > ? AND u.id <= ? AND l.billable = 1"
                           " ON CONFLICT DO NOTHING", (last, top))
                n = self._one("SELECT COUNT(*) FROM m.usage WHERE id > ? AND id <= ?",
                              (last, top))[0]
                self._exec(_SET_CURSOR, (source, top))
                hook("before_commit")
            hook("after_commit")
            total += int(n)

    def get_cursor(self, source: str) -> int:
        """Return the last meter id copied from ``source`` (0 if none)."""
        row = self._one("SELECT last_id FROM meter_cursor WHERE source = ?", (source,))
        return 0 if row is None else int(row[0])

    # -- aggregates (streaming SQL; never all records in memory) --------------------------------

    def max_seq(self) -> int:
        """Return the newest ledger ``seq`` (0 when empty)."""
        row = self._one("SELECT MAX(seq) FROM ledger_usage")
        return int(row[0] or 0)

    def meter_totals(self, customer: str, start_ms: int, end_ms: int, *,
                     min_seq: int = 0, max_seq: int | None = None) -> dict[str, tuple[int, int]]:
        """``{meter: (units, records)}`` admitted in ``[start_ms, end_ms)``, seq in the range."""
        top = self.max_seq() if max_seq is None else max_seq
        rows = self._exec(
            "SELECT meter, SUM(units), COUNT(*) FROM ledger_units WHERE customer = ? AND"
            " admitted_at_ms >= ? AND admitted_at_ms < ? AND seq > ? AND seq <= ?"
            " GROUP BY meter ORDER BY meter", (customer, start_ms, end_ms, min_seq, top))
        return {str(m): (int(u), int(c)) for m, u, c in rows}

    def daily_totals(self, customer: str, start_ms: int, end_ms: int,
                     max_seq: int) -> list[tuple[int, str, int]]:
        """``(day index from start, meter, units)`` for the usage chart."""
        rows = self._exec(
            "SELECT (admitted_at_ms - ?) / 86400000 AS d, meter, SUM(units) FROM ledger_units"
            " WHERE customer = ? AND admitted_at_ms >= ? AND admitted_at_ms < ? AND seq <= ?"
            " GROUP BY d, meter ORDER BY d, meter", (start_ms, customer, start_ms, end_ms, max_seq))
        return [(int(d), str(m), int(u)) for d, m, u in rows]

    def usage_ids(self, customer: str, meter: str, start_ms: int, end_ms: int, *,
                  min_seq: int, max_seq: int) -> Iterator[str]:
        """Stream the usage_ids behind one line, sorted, streamed."""
        sql = self._sql(_IDS_SQLITE if self.dialect == "sqlite" else _IDS_PG)
        params = (customer, meter, start_ms, end_ms, min_seq, max_seq)
        if self.dialect == "postgres":
            with self.conn.transaction(), self.conn.cursor(name="usage_ids") as cur:
                cur.itersize = 10_000
                cur.execute(sql, params)
                for (uid,) in cur:
                    yield str(uid)
            return
        cur = self.conn.execute(sql, params)
        while rows := cur.fetchmany(8192):
            yield from [uid for (uid,) in rows]

    def first_admitted_ms(self, customer: str, before_ms: int, *, min_seq: int, max_seq: int,
                          after_ms: int = -(2**62)) -> int | None:
        """Return the earliest admission in ``[after_ms, before_ms)`` among seq in the range."""
        row = self._one(
            "SELECT MIN(admitted_at_ms) FROM ledger_units WHERE customer = ? AND"
            " admitted_at_ms >= ? AND admitted_at_ms < ? AND seq > ? AND seq <= ?",
            (customer, after_ms, before_ms, min_seq, max_seq))
        return None if row is None or row[0] is None else int(row[0])

    def customers_with_usage(self, start_ms: int, end_ms: int) -> list[str]:
        """List customers with billable units admitted in ``[start_ms, end_ms)``."""
        rows = self._exec("SELECT DISTINCT customer FROM ledger_units WHERE admitted_at_ms >= ?"
                          " AND admitted_at_ms < ? ORDER BY customer", (start_ms, end_ms))
        return [str(c) for (c,) in rows]

    # -- invoices: issued once, never changed ---------------------------------------------------

    def get_invoice(self, customer: str, period: str) -> str | None:
        """Return the issued invoice document for ``(customer, period)``, if any."""
        row = self._one("SELECT document FROM invoices WHERE customer = ? AND period = ?",
                        (customer, period))
        return None if row is None else str(row[0])

    def last_invoice(self, customer: str) -> tuple[str, int] | None:
        """``(period, upto_seq)`` of the customer's latest issued invoice."""
        row = self._one("SELECT period, upto_seq FROM invoices WHERE customer = ?"
                        " ORDER BY period DESC LIMIT 1", (customer,))
        return None if row is None else (str(row[0]), int(row[1]))

    def billed_quantity(self, customer: str, period: str, meter: str) -> int:
        """Units of ``meter`` already billed for ``period`` (its invoice plus adjustments)."""
        row = self._one("SELECT SUM(quantity) FROM billed WHERE customer = ? AND period = ?"
                        " AND meter = ?", (customer, period, meter))
        return int(row[0] or 0)

    def issue(self, number: str, customer: str, period: str, upto_seq: int, document: str,
              billed: Sequence[tuple[str, str, int]]) -> bool:
        """Record an issued invoice and its billed quantities; ``False`` if already issued."""
        with self.transaction():
            if self._one("SELECT 1 FROM invoices WHERE number = ? OR (customer = ? AND"
                         " period = ?)", (number, customer, period)) is not None:
                return False
            self._exec("INSERT INTO invoices (number, customer, period, upto_seq, document)"
                       " VALUES (?, ?, ?, ?, ?)", (number, customer, period, upto_seq, document))
            for p, meter, qty in billed:
                self._exec("INSERT INTO billed (invoice, customer, period, meter, quantity)"
                           " VALUES (?, ?, ?, ?, ?)", (number, customer, p, meter, qty))
        return True


def open_ledger(url: str, *, connect_timeout_s: float = 10.0) -> Ledger:
    """``sqlite:///path`` or ``postgresql://...`` -> a ready :class:`Ledger` (schema created)."""
    if url.startswith("sqlite:///"):
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                               timeout=connect_timeout_s)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache for big batches
        return Ledger(conn, "sqlite")
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        pg = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(connect_timeout_s)),
                             options="-c statement_timeout=600000")
        return Ledger(pg, "postgres")
    raise ValueError(f"unsupported ledger URL: {url}")
