"""Meter sinks: where final usage records go once they leave the spool.

A sink's :meth:`MeterSink.send` returns only when the meter has the whole batch (the ack); it
raises :class:`SinkError` otherwise, and the forwarder retries the batch. Delivery is at least
once: a retry after a lost ack may write a record twice; ``usage_id`` dedupes it downstream.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tollhouse.config import MeterLocation
from tollhouse.metering.schema import (
    FIELD_RECORD,
    FIELD_USAGE_ID,
    INSERT_UNITS,
    INSERT_USAGE,
    METER_SQLITE_DDL,
    STREAM_KEY,
    UsageRecord,
    state_name,
)
from tollhouse.sqlite import connect as sqlite_connect

__all__ = ["MeterSink", "RedisStreamSink", "SinkError", "SqliteMeterSink", "open_sink"]


class SinkError(Exception):
    """The meter did not acknowledge the batch; retry it later."""


class MeterSink(Protocol):
    """Where final usage records are written, in batches."""

    async def send(self, records: Sequence[UsageRecord]) -> None:
        """Write the batch; return only once the meter acknowledged it, else raise SinkError."""

    async def close(self) -> None:
        """Release connections."""


class SqliteMeterSink:
    """The embedded meter: ``METER_SQLITE_DDL`` tables, ``INSERT OR IGNORE`` by usage_id."""

    def __init__(self, path: Path | str, *, timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tollhouse-meter")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # WAL, FULL: an ack must survive a power cut; the billing job reads concurrently
            conn = sqlite_connect(self.path, timeout_s=5.0)
            # one transaction: a reader sees either no tables or all of them (meter_file.py)
            conn.executescript(f"BEGIN IMMEDIATE;\n{METER_SQLITE_DDL}\nCOMMIT;")
            self._conn = conn
        return self._conn

    def _write(self, records: Sequence[UsageRecord]) -> None:
        conn = self._connection()
        rows = [
            (
                r.usage_id,
                r.customer,
                r.plan,
                r.feature,
                state_name(r.state),
                int(r.billable),
                r.admitted_at_ms,
                r.finalized_at_ms,
                r.SerializeToString(),
            )
            for r in records
        ]
        units = [(r.usage_id, m, n) for r in records for m, n in r.units.items()]
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_USAGE, rows)
            conn.executemany(INSERT_UNITS, units)
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def send(self, records: Sequence[UsageRecord]) -> None:
        """Insert the batch in one transaction (duplicates ignored)."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._write, list(records)), self._timeout_s
            )
        except (sqlite3.Error, OSError, TimeoutError) as e:
            raise SinkError(f"sqlite meter {self.path}: {type(e).__name__}: {e}") from e

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """Close the file and the writer thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=False)


class RedisStreamSink:
    """The distributed meter: XADD to ``STREAM_KEY``, one pipeline per batch, never trimmed."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    async def send(self, records: Sequence[UsageRecord]) -> None:
        """XADD the batch (pipelined, no transaction); ack = every XADD returned an id."""
        if not records:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for r in records:
                    fields = {FIELD_USAGE_ID: r.usage_id, FIELD_RECORD: r.SerializeToString()}
                    pipe.xadd(STREAM_KEY, fields)  # type: ignore[arg-type]
                ids = await asyncio.wait_for(pipe.execute(raise_on_error=True), self._timeout_s)
        except (RedisError, OSError, TimeoutError) as e:
            raise SinkError(f"redis meter: {type(e).__name__}: {e}") from e
        if len(ids) != len(records):
            raise SinkError(f"redis meter acknowledged {len(ids)} of {len(records)} records")

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def open_sink(meter: MeterLocation) -> MeterSink:
    """Open the sink of the meter: the SQLite file or the Redis stream."""
    if meter.path is not None:
        return SqliteMeterSink(meter.path)
    return RedisStreamSink(meter.url)
