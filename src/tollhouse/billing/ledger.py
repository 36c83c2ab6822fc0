"""The billing ledger: every usage_id at most once, daily aggregates, issued invoices. SQLite or PG.

Tables (same shape in both dialects; schema and migrations in :mod:`ledger_schema`):

- ``ledger_ids``: one row per usage_id ever seen (dedupe), with its customer, admission time,
  billable flag, generation and the final record's bytes (schema 3; tracing and exports);
- ``ledger_buckets``: billable units, record count, first admission and usage-id digest lanes per
  customer x meter x UTC day x generation, added to at consume time (upsert-add);
- ``ledger_meta``: ``schema_version`` and ``gen``, the generation consumers write into now;
- ``meter_cursor``: the last SQLite-meter ``id`` copied, updated in the same transaction;
- ``invoices``: issued invoices (the canonical JSON document) with ``upto_seq``, the last
  generation they cover; ``billed``: quantities billed per (customer, period, meter);
  ``credits_applied``: prepaid credit each issued invoice applied per grant (minor units).

Generations replace per-record arrival numbers: an issuing run seals (:meth:`Ledger.seal`) the
current generation (consumers move to the next one; they take the same lock as the seal) and
invoices what is in generations ``<= upto_seq``; whatever arrives later lands in a later
generation and is late usage for the next invoice. Range arguments in milliseconds are read at
UTC-day granularity (billing periods start and end at midnight UTC).

Synchronous on purpose: the billing job is its own process; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from tollhouse.billing.digest import LANE, from_lanes, id_hash, sql_id_hash
from tollhouse.billing.ledger_schema import DAY_MS, ensure_schema
from tollhouse.config import sqlite_path
from tollhouse.sqlite import connect as sqlite_connect

__all__ = ["FailureHook", "Ledger", "LedgerRow", "LineTotal", "open_ledger"]

FailureHook = Callable[[str], None]
"""Called with ``"before_commit"`` / ``"after_commit"``; tests raise from it to simulate a crash."""

_UPSERT = (
    "INSERT INTO ledger_buckets (customer, meter, day, gen, units, records, first_ms, h_hi,"
    " h_lo) {source} ON CONFLICT (customer, meter, day, gen) DO UPDATE SET"
    " units = ledger_buckets.units + excluded.units,"
    " records = ledger_buckets.records + excluded.records,"
    " first_ms = {least}(ledger_buckets.first_ms, excluded.first_ms),"
    " h_hi = (ledger_buckets.h_hi + excluded.h_hi"
    " + (ledger_buckets.h_lo + excluded.h_lo) / 4294967296) % 4294967296,"
    " h_lo = (ledger_buckets.h_lo + excluded.h_lo) % 4294967296"
)
_SET_CURSOR = (
    "INSERT INTO meter_cursor (source, last_id) VALUES (?, ?) "
    "ON CONFLICT (source) DO UPDATE SET last_id = excluded.last_id"
)
_RANGE = " AND day >= ? AND day < ? AND gen > ? AND gen <= ?"


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One usage record as the ledger receives it."""

    usage_id: str
    customer: str
    admitted_at_ms: int
    billable: bool
    units: tuple[tuple[str, int], ...] = field(default=())
    record: bytes | None = None  # the serialized final UsageRecord, kept for tracing


@dataclass(frozen=True, slots=True)
class LineTotal:
    """One meter's usage over a range: units, records carrying it, digest of their usage ids."""

    units: int
    records: int
    digest: str


def _noop(_: str) -> None:
    return None


def day_range(start_ms: int, end_ms: int) -> tuple[int, int]:
    """``[start_ms, end_ms)`` as UTC days ``[first, last + 1)`` (end rounded up)."""
    return start_ms // DAY_MS, -(-end_ms // DAY_MS)


class Ledger:
    """A ledger store over one DB-API connection; build it with :func:`open_ledger`."""

    def __init__(self, conn: Any, dialect: Literal["sqlite", "postgres"]) -> None:
        self.conn = conn
        self.dialect = dialect
        ensure_schema(self)

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else sql.replace("%", "%%").replace("?", "%s")

    def exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute one statement (``?`` placeholders in both dialects); return the cursor."""
        return self.conn.execute(self._sql(sql), params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute and return the first row (or ``None``)."""
        return self.exec(sql, params).fetchone()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute ``sql`` for each of ``rows`` (nothing for none)."""
        if rows:
            self.conn.cursor().executemany(self._sql(sql), rows)

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

    # -- generations ----------------------------------------------------------------------------

    def write_gen(self) -> int:
        """Inside a transaction: the generation to write into, locked until the commit (PG)."""
        lock = " FOR UPDATE" if self.dialect == "postgres" else ""
        return int(self.one(f"SELECT value FROM ledger_meta WHERE key = 'gen'{lock}")[0])  # noqa: S608 - constant SQL pieces, values bound

    def max_seq(self) -> int:
        """Return the newest generation (everything in the ledger is ``<=`` it)."""
        return int(self.one("SELECT value FROM ledger_meta WHERE key = 'gen'")[0])

    def seal(self) -> int:
        """Close the current generation and return it: later records go to the next one."""
        with self.transaction():
            gen = self.write_gen()
            self.exec("UPDATE ledger_meta SET value = ? WHERE key = 'gen'", (gen + 1,))
        return gen

    # -- ingest ---------------------------------------------------------------------------------

    def upsert_buckets(
        self, rows: Sequence[tuple[str, str, int, int, int, int, int, int, int]]
    ) -> None:
        """Add ``(customer, meter, day, gen, units, records, first_ms, h_hi, h_lo)`` rows."""
        self.executemany(self.upsert_sql("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"), rows)

    def upsert_sql(self, source: str) -> str:
        """The bucket upsert statement fed by ``source`` (``VALUES`` or a ``SELECT``)."""
        return _UPSERT.format(source=source, least="min" if self.dialect == "sqlite" else "LEAST")

    def insert_rows(
        self,
        rows: Sequence[LedgerRow],
        *,
        cursor: tuple[str, int] | None = None,
        hook: FailureHook = _noop,
    ) -> int:
        """Insert ``rows`` (duplicates ignored, the first arrival wins) and move ``cursor``.

        One transaction. Returns how many rows were new. ``hook`` runs just before and just
        after the commit.
        """
        with self.transaction():
            gen = self.write_gen()
            fresh = self._fresh(rows)
            self.executemany(
                "INSERT INTO ledger_ids (usage_id, customer, admitted_at_ms, gen,"
                " billable, record) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.usage_id, r.customer, r.admitted_at_ms, gen, int(r.billable), r.record)
                    for r in fresh
                ],
            )
            self.upsert_buckets(_aggregate(fresh, gen))
            if cursor is not None:
                self.exec(_SET_CURSOR, cursor)
            hook("before_commit")
        hook("after_commit")
        return len(fresh)

    def _fresh(self, rows: Sequence[LedgerRow]) -> list[LedgerRow]:
        first: dict[str, LedgerRow] = {}
        for r in rows:
            first.setdefault(r.usage_id, r)
        ids = list(first)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ", ".join("?" * len(chunk))
            for (uid,) in self.exec(
                f"SELECT usage_id FROM ledger_ids WHERE usage_id IN ({marks})",  # noqa: S608 - constant SQL pieces, values bound
                chunk,
            ):
                first.pop(str(uid), None)
        return list(first.values())

    def copy_sqlite_meter(
        self, meter_path: str, source: str, *, batch: int = 50_000, hook: FailureHook = _noop
    ) -> int:
        """SQLite ledger only: copy meter rows past the cursor in SQL, batched (exactly once)."""
        from tollhouse.billing.ledger_copy import copy_sqlite_meter

        return copy_sqlite_meter(self, meter_path, source, batch=batch, hook=hook)

    def get_cursor(self, source: str) -> int:
        """Return the last meter id copied from ``source`` (0 if none)."""
        row = self.one("SELECT last_id FROM meter_cursor WHERE source = ?", (source,))
        return 0 if row is None else int(row[0])

    # -- aggregates (bucket rows only; never a scan of usage ids) -------------------------------

    def meter_lines(
        self,
        customer: str,
        start_ms: int,
        end_ms: int,
        *,
        min_seq: int = 0,
        max_seq: int | None = None,
    ) -> dict[str, LineTotal]:
        """``{meter: LineTotal}`` admitted in ``[start_ms, end_ms)``, generations in the range."""
        top = self.max_seq() if max_seq is None else max_seq
        rows = self.exec(
            "SELECT meter, SUM(units), SUM(records), SUM(h_hi), SUM(h_lo) FROM ledger_buckets"  # noqa: S608 - constant SQL pieces, values bound
            f" WHERE customer = ?{_RANGE} GROUP BY meter ORDER BY meter",
            (customer, *day_range(start_ms, end_ms), min_seq, top),
        )
        return {
            str(m): LineTotal(int(u), int(n), from_lanes(int(hi), int(lo)))
            for m, u, n, hi, lo in rows
        }

    def meter_totals(
        self,
        customer: str,
        start_ms: int,
        end_ms: int,
        *,
        min_seq: int = 0,
        max_seq: int | None = None,
    ) -> dict[str, tuple[int, int]]:
        """``{meter: (units, records)}`` admitted in ``[start_ms, end_ms)``, seq in the range."""
        lines = self.meter_lines(customer, start_ms, end_ms, min_seq=min_seq, max_seq=max_seq)
        return {m: (t.units, t.records) for m, t in lines.items()}

    def daily_totals(
        self, customer: str, start_ms: int, end_ms: int, max_seq: int
    ) -> list[tuple[int, str, int]]:
        """``(day index from start, meter, units)`` for the usage chart."""
        first, last = day_range(start_ms, end_ms)
        rows = self.exec(
            "SELECT day - ?, meter, SUM(units) FROM ledger_buckets WHERE customer = ?"
            " AND day >= ? AND day < ? AND gen <= ? GROUP BY day, meter ORDER BY day, meter",
            (first, customer, first, last, max_seq),
        )
        return [(int(d), str(m), int(u)) for d, m, u in rows]

    def first_admitted_ms(
        self, customer: str, before_ms: int, *, min_seq: int, max_seq: int, after_ms: int = -(2**62)
    ) -> int | None:
        """Return the earliest billable admission in ``[after_ms, before_ms)``, gens in range."""
        row = self.one(
            f"SELECT MIN(first_ms) FROM ledger_buckets WHERE customer = ?{_RANGE}",  # noqa: S608 - constant SQL pieces, values bound
            (customer, *day_range(after_ms, before_ms), min_seq, max_seq),
        )
        return None if row is None or row[0] is None else int(row[0])

    def first_admissions(self, max_seq: int) -> dict[str, int]:
        """``{customer: earliest billable admission (ms)}`` over generations ``<= max_seq``."""
        rows = self.exec(
            "SELECT customer, MIN(first_ms) FROM ledger_buckets WHERE gen <= ?"
            " GROUP BY customer ORDER BY customer",
            (max_seq,),
        )
        return {str(c): int(t) for c, t in rows}

    def customers_with_usage(self, start_ms: int, end_ms: int) -> list[str]:
        """List customers with billable units admitted in ``[start_ms, end_ms)``."""
        rows = self.exec(
            "SELECT DISTINCT customer FROM ledger_buckets WHERE day >= ?"
            " AND day < ? ORDER BY customer",
            day_range(start_ms, end_ms),
        )
        return [str(c) for (c,) in rows]

    def usage_ids(
        self,
        customer: str,
        start_ms: int,
        end_ms: int,
        *,
        min_seq: int = 0,
        max_seq: int | None = None,
    ) -> list[str]:
        """The billable usage ids of a customer admitted in the range, sorted (tracing; a scan)."""
        top = self.max_seq() if max_seq is None else max_seq
        rows = self.exec(
            "SELECT usage_id FROM ledger_ids WHERE customer = ? AND billable = 1"
            " AND admitted_at_ms >= ? AND admitted_at_ms < ? AND gen > ?"
            " AND gen <= ?",
            (customer, start_ms, end_ms, min_seq, top),
        )
        return sorted(str(u) for (u,) in rows)

    # -- invoices: issued once, never changed ---------------------------------------------------

    def first_invoices(self) -> dict[str, str]:
        """``{customer: period label}`` of each customer's earliest issued invoice."""
        rows = self.exec(
            "SELECT customer, MIN(period) FROM invoices GROUP BY customer ORDER BY customer"
        )
        return {str(c): str(p) for c, p in rows}

    def get_invoice(self, customer: str, period: str) -> str | None:
        """Return the issued invoice document for ``(customer, period)``, if any."""
        row = self.one(
            "SELECT document FROM invoices WHERE customer = ? AND period = ?", (customer, period)
        )
        return None if row is None else str(row[0])

    def last_invoice(self, customer: str) -> tuple[str, int] | None:
        """``(period, upto_seq)`` of the customer's latest issued invoice."""
        row = self.one(
            "SELECT period, upto_seq FROM invoices WHERE customer = ? ORDER BY period DESC LIMIT 1",
            (customer,),
        )
        return None if row is None else (str(row[0]), int(row[1]))

    def billed_quantity(self, customer: str, period: str, meter: str) -> int:
        """Units of ``meter`` already billed for ``period`` (its invoice plus adjustments)."""
        row = self.one(
            "SELECT SUM(quantity) FROM billed WHERE customer = ? AND period = ? AND meter = ?",
            (customer, period, meter),
        )
        return int(row[0] or 0)

    def credits_used(self, customer: str) -> dict[str, int]:
        """Grant id -> minor units the customer's issued invoices applied from it."""
        rows = self.exec(
            "SELECT grant_id, SUM(amount) FROM credits_applied WHERE customer = ?"
            " GROUP BY grant_id ORDER BY grant_id",
            (customer,),
        )
        return {str(g): int(a) for g, a in rows}

    def issue(
        self,
        number: str,
        customer: str,
        period: str,
        upto_seq: int,
        document: str,
        billed: Sequence[tuple[str, str, int]],
        credits: Sequence[tuple[str, int]] = (),
    ) -> bool:
        """Record an issued invoice, its billed quantities and the credit it applied per grant.

        ``False`` (nothing written) if the invoice is already issued.
        """
        with self.transaction():
            if (
                self.one(
                    "SELECT 1 FROM invoices WHERE number = ? OR (customer = ? AND period = ?)",
                    (number, customer, period),
                )
                is not None
            ):
                return False
            self.exec(
                "INSERT INTO invoices (number, customer, period, upto_seq, document)"
                " VALUES (?, ?, ?, ?, ?)",
                (number, customer, period, upto_seq, document),
            )
            self.executemany(
                "INSERT INTO billed (invoice, customer, period, meter, quantity)"
                " VALUES (?, ?, ?, ?, ?)",
                [(number, customer, p, meter, qty) for p, meter, qty in billed],
            )
            self.executemany(
                "INSERT INTO credits_applied (invoice, customer, grant_id, amount)"
                " VALUES (?, ?, ?, ?)",
                [(number, customer, g, amount) for g, amount in credits],
            )
        return True


def _aggregate(
    rows: Sequence[LedgerRow], gen: int
) -> list[tuple[str, str, int, int, int, int, int, int, int]]:
    acc: dict[tuple[str, str, int], list[int]] = {}
    for r in rows:
        if not r.billable:
            continue
        h = id_hash(r.usage_id)
        for meter, units in r.units:
            b = acc.setdefault(
                (r.customer, meter, r.admitted_at_ms // DAY_MS), [0, 0, r.admitted_at_ms, 0]
            )
            b[0] += units
            b[1] += 1
            b[2] = min(b[2], r.admitted_at_ms)
            b[3] += h
    return [
        (c, m, d, gen, u, n, first, *divmod(h % (LANE * LANE), LANE))
        for (c, m, d), (u, n, first, h) in acc.items()
    ]


def open_ledger(url: str, *, connect_timeout_s: float = 10.0) -> Ledger:
    """``sqlite:///path`` or ``postgresql://...`` -> a ready :class:`Ledger` (schema created)."""
    if url.startswith("sqlite:///"):
        path = sqlite_path(url)
        conn = sqlite_connect(path, timeout_s=connect_timeout_s)
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache for big batches
        conn.execute("PRAGMA wal_autocheckpoint=10000")  # ~40 MiB: hot pages checkpointed less
        conn.create_function("th_id_hash", 1, sql_id_hash, deterministic=True)
        return Ledger(conn, "sqlite")
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        pg = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, int(connect_timeout_s)),
            options="-c statement_timeout=600000",
        )
        return Ledger(pg, "postgres")
    raise ValueError(f"unsupported ledger URL: {url}")
