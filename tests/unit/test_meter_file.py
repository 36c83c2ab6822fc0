"""Readers of the embedded meter while the sink is still creating it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tests.support.billing import record
from tollhouse.billing.consume import SqliteMeterTotals, consume_sqlite_meter
from tollhouse.billing.ledger import open_ledger
from tollhouse.config import MeterLocation
from tollhouse.metering.meter_file import connect_ro, meter_ready
from tollhouse.metering.report import read_meter
from tollhouse.metering.sinks import SqliteMeterSink


def _half_created(path: Path) -> None:
    """The state a reader can meet between the sink's connect and its schema commit."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE usage (usage_id TEXT)")  # an older sink's first statement only
    conn.close()


def test_a_meter_without_its_tables_reads_as_empty_not_as_an_error(tmp_path: Path) -> None:
    """GET /v1/usage, `tollhouse usage` and billing see no usage yet instead of failing (503)."""
    empty, half = tmp_path / "empty.db", tmp_path / "half.db"
    empty.touch()
    _half_created(half)
    for path in (empty, half):
        url = MeterLocation.sqlite(path)
        assert SqliteMeterTotals(url)("acme", 0, 2**62) == {}
        assert asyncio.run(read_meter(url, 0, 2**62)) == []
        ledger = open_ledger(f"sqlite:///{tmp_path}/ledger-{path.stem}.db")
        try:
            assert consume_sqlite_meter(ledger, url) == 0
        finally:
            ledger.close()


def test_the_sink_creates_its_schema_in_one_transaction(tmp_path: Path) -> None:
    """After the sink's first batch every meter table is there, and its units are read."""
    path = tmp_path / "meter.db"
    sink = SqliteMeterSink(path)

    async def write() -> None:
        await sink.send([record("u1", "acme", 1_000.0, {"requests": 1, "tokens": 7})])
        await sink.close()

    asyncio.run(write())
    conn = connect_ro(path)
    try:
        assert meter_ready(conn)
    finally:
        conn.close()
    assert SqliteMeterTotals(MeterLocation.sqlite(path))("acme", 0, 2**62) == {
        "requests": 1,
        "tokens": 7,
    }
