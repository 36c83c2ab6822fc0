"""SQLite meter -> SQLite ledger in SQL.

``ATTACH`` the meter, then per batch of meter ids:

1. insert the batch's usage ids into ``ledger_ids`` (``ON CONFLICT DO NOTHING``);
2. if every row was new (the usual case: the cursor only moves forward), add the batch's
   aggregates to ``ledger_buckets``. They were computed ahead, while earlier batches were being
   written, by reader threads on their own read-only connections to the meter: one join with
   ``usage_units`` grouped by customer x meter x day, the per-id hashes summed in SQL
   (``th_id_hash``). SQLite releases the GIL while it works, so readers and writer overlap;
3. otherwise (records the ledger already has, e.g. from another meter), roll the batch back and
   redo it in the ledger's connection for the new ids only;
4. move the cursor, commit: all of it in one transaction, so a crash anywhere repeats the batch.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tollhouse.billing.digest import sql_id_hash
from tollhouse.metering.meter_file import verify_rows
from tollhouse.sqlite import connect_existing, file_uri

if TYPE_CHECKING:
    from tollhouse.billing.ledger import FailureHook, Ledger

__all__ = ["copy_sqlite_meter"]

_IDS = (
    "INSERT INTO ledger_ids (usage_id, customer, admitted_at_ms, gen, billable, record)"
    " SELECT usage_id, customer, admitted_at_ms, ?, billable, record FROM m.usage u"
    " WHERE {where} ORDER BY id ON CONFLICT DO NOTHING"
)
_B = (
    "SELECT usage_id, customer, admitted_at_ms, th_id_hash(usage_id) AS hv"
    " FROM {schema}.usage u WHERE {where} AND billable = 1"
)
_SELECT = (
    "SELECT b.customer, uu.meter, b.admitted_at_ms / 86400000{gen}, SUM(uu.units),"
    " COUNT(*), MIN(b.admitted_at_ms), (SUM((hv >> 32) & 4294967295)"
    " + SUM(hv & 4294967295) / 4294967296) % 4294967296, SUM(hv & 4294967295) % 4294967296"
    " FROM b CROSS JOIN {schema}.usage_units uu ON uu.usage_id = b.usage_id WHERE true"
    " GROUP BY 1, 2, 3"
)
_RANGE = "u.id > ? AND u.id <= ?"
_NEW = _RANGE + " AND u.id IN (SELECT id FROM temp.th_new)"  # noqa: S608 - constant SQL pieces, values bound


Aggregates = list[tuple[Any, ...]]


class _Readers:
    """Reader threads, each with its own read-only meter connection, computing batch aggregates."""

    def __init__(self, uri: str, path: Path, threads: int) -> None:
        self._uri = uri
        self._path = path
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ledger-read")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_existing(self._path, timeout_s=10.0)
            conn.execute("PRAGMA cache_size=-16384")
            conn.create_function("th_id_hash", 1, sql_id_hash, deterministic=True)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def aggregate(self, last: int, top: int) -> Aggregates:
        """Bucket rows ``(customer, meter, day, units, records, first_ms, h_hi, h_lo)``.

        Raises :class:`MeterCorrupt` first if a row of the batch disagrees with its record.
        """
        conn = self._conn()
        verify_rows(conn, self._path, last, top)
        sql = "WITH b AS MATERIALIZED ({}) {}".format(
            _B.format(where=_RANGE, schema="main"), _SELECT.format(gen="", schema="main")
        )
        return conn.execute(sql, (last, top)).fetchall()

    def close(self) -> None:
        """Stop the threads and close their connections."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for conn in self._conns:
            conn.close()


@contextmanager
def _attached(ledger: Ledger, uri: str) -> Iterator[None]:
    ledger.conn.execute("ATTACH DATABASE ? AS m", (uri,))
    try:
        yield
    finally:
        ledger.conn.execute("DETACH DATABASE m")


def copy_sqlite_meter(
    ledger: Ledger, meter_path: str, source: str, *, batch: int, hook: FailureHook, readers: int = 2
) -> int:
    """Copy meter rows past the cursor, ``batch`` ids a transaction; return rows read."""
    if ledger.dialect != "sqlite":
        raise ValueError("copy_sqlite_meter needs a SQLite ledger")
    path = Path(meter_path).resolve()
    uri = file_uri(path)
    pool = _Readers(uri, path, readers)
    try:
        with _attached(ledger, uri):
            return _batches(ledger, pool, source, batch, hook, readers + 1)
    finally:
        pool.close()


def _batches(
    ledger: Ledger, pool: _Readers, source: str, batch: int, hook: FailureHook, ahead: int
) -> int:
    total, last = 0, ledger.get_cursor(source)
    queue: deque[tuple[int, int, Future[Aggregates]]] = deque()
    while True:
        while len(queue) < ahead:  # keep the readers busy with the next batches
            top = ledger.one(
                "SELECT MAX(id) FROM (SELECT id FROM m.usage WHERE id > ? ORDER BY id LIMIT ?)",
                (last, batch),
            )[0]
            if top is None:
                break
            queue.append((last, int(top), pool.pool.submit(pool.aggregate, last, int(top))))
            last = int(top)
        if not queue:
            return total
        lo, top, future = queue.popleft()
        with ledger.transaction():
            n = int(
                ledger.one("SELECT COUNT(*) FROM m.usage WHERE id > ? AND id <= ?", (lo, top))[0]
            )
            _copy(ledger, lo, top, n, future)
            ledger.exec(
                "INSERT INTO meter_cursor (source, last_id) VALUES (?, ?) ON CONFLICT"
                " (source) DO UPDATE SET last_id = excluded.last_id",
                (source, top),
            )
            hook("before_commit")
        hook("after_commit")
        total += n


def _copy(ledger: Ledger, last: int, top: int, n: int, ahead: Future[Aggregates]) -> None:
    aggregates = ahead.result()  # verified: a damaged row fails the batch before any insert
    gen = ledger.write_gen()
    ledger.exec("SAVEPOINT th_batch")
    ledger.exec(_IDS.format(where=_RANGE), (gen, last, top))
    if int(ledger.one("SELECT changes()")[0]) == n:
        ledger.exec("RELEASE th_batch")
        ledger.upsert_buckets([(c, m, d, gen, *rest) for c, m, d, *rest in aggregates])
        return
    ledger.exec("ROLLBACK TO th_batch")
    ledger.exec("RELEASE th_batch")
    ledger.exec("CREATE TEMP TABLE IF NOT EXISTS th_new (id INTEGER PRIMARY KEY)")
    ledger.exec("DELETE FROM temp.th_new")
    ledger.exec(
        "INSERT INTO temp.th_new SELECT u.id FROM m.usage u WHERE u.id > ? AND u.id <= ?"
        " AND NOT EXISTS (SELECT 1 FROM ledger_ids l WHERE l.usage_id = u.usage_id)",
        (last, top),
    )
    ledger.exec(_IDS.format(where=_NEW), (gen, last, top))
    select = _SELECT.format(gen=", ?", schema="m")
    ledger.exec(
        f"WITH b AS MATERIALIZED ({_B.format(where=_NEW, schema='m')}) "
        + ledger.upsert_sql(select),
        (last, top, gen),
    )
    ledger.exec("DELETE FROM temp.th_new")
