"""``tollhouse usage`` report and reconciliation, over a SQLite meter and a real Redis stream."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from tests.servers import RedisServer
from tollhouse.config import MeterLocation, parse_config
from tollhouse.metering import RedisStreamSink, Spool, SqliteMeterSink
from tollhouse.metering.policy import Finalizer
from tollhouse.metering.report import (
    ReconcileReport,
    UsageRow,
    format_reconcile,
    format_usage,
    reconcile,
    usage_report,
)
from tollhouse.metering.schema import STREAM_KEY, UsageRecord


def _rec(
    uid: str, customer: str, at_ms: int, state: int = UsageRecord.CONFIRMED, **units: int
) -> UsageRecord:
    return UsageRecord(
        usage_id=uid,
        customer=customer,
        plan="p",
        feature="f",
        units=units,
        admitted_at_ms=at_ms,
        state=state,
        billable=bool(units),
        finalized_at_ms=at_ms + 1,
    )


_RECORDS = [
    _rec("a1", "acme", 100, requests=1, egress=500),
    _rec("a2", "acme", 200, requests=1, egress=700),
    _rec("b1", "bolt", 150, requests=1),
    _rec("v1", "bolt", 160, UsageRecord.VOIDED),
    _rec("late", "acme", 5000, requests=1),  # outside the range
]


async def test_usage_report_sqlite_meter(tmp_path: Path) -> None:
    """Units and requests per customer and meter over the range; voided and out-of-range skipped."""
    sink = SqliteMeterSink(tmp_path / "m.db")
    await sink.send(_RECORDS)
    await sink.close()
    url = MeterLocation.sqlite(tmp_path / "m.db")
    rows = await usage_report(url, 0, 1000, None)
    assert rows == [
        UsageRow("acme", "egress", 1200, 2),
        UsageRow("acme", "requests", 2, 2),
        UsageRow("bolt", "requests", 1, 1),
    ]
    assert await usage_report(url, 0, 1000, "bolt") == [UsageRow("bolt", "requests", 1, 1)]
    text = format_usage(rows)
    assert "1,200" in text
    assert text.splitlines()[0].split() == ["customer", "meter", "units", "requests"]


async def test_usage_report_redis_dedupes_redelivered_records(redis_server: RedisServer) -> None:
    """A record delivered twice to the stream (at-least-once) is counted once."""
    r = aioredis.Redis.from_url(redis_server.url)
    await r.delete(STREAM_KEY)
    await r.aclose()
    sink = RedisStreamSink(redis_server.url)
    await sink.send(_RECORDS)
    await sink.send(_RECORDS[:2])
    await sink.close()
    rows = await usage_report(MeterLocation.parse(redis_server.url), 0, 1000, "acme")
    assert rows == [UsageRow("acme", "egress", 1200, 2), UsageRow("acme", "requests", 2, 2)]


async def test_reconcile_joins_spool_and_meter(tmp_path: Path) -> None:
    """Reconcile counts pending and unsent records from the spool, the rest from the meter."""
    sink = SqliteMeterSink(tmp_path / "m.db")
    await sink.send(_RECORDS[:4])
    await sink.close()
    fin = Finalizer(parse_config({}))
    spool = Spool(tmp_path / "spool", finalizer=lambda: fin, on_applied=lambda _: None)
    await spool.open()
    await spool.reserve(_rec("p1", "acme", 320, UsageRecord.RESERVED, requests=1))
    await spool.reserve(_rec("u1", "acme", 310, UsageRecord.RESERVED, requests=1))
    await spool.reserve(_rec("a1", "acme", 100, UsageRecord.RESERVED, requests=1))
    await spool.expire(310, 400, fin)  # u1 and a1 -> UNCONFIRMED
    await spool.close()
    got = await reconcile(tmp_path / "spool", MeterLocation.sqlite(tmp_path / "m.db"), 0, 1000)
    assert got == ReconcileReport(
        reserved=1,
        confirmed=3,
        voided=1,
        unconfirmed=1,
        unsent=1,
        billed_units={"egress": 1200, "requests": 3},
    )
    assert "reserved (pending)" in format_reconcile(got)


async def test_report_on_a_meter_file_without_tables(tmp_path: Path) -> None:
    """A meter file the sink has not written to yet reads as empty, not as an error."""
    import sqlite3

    path = tmp_path / "meter.db"
    sqlite3.connect(path).close()
    rows = await usage_report(MeterLocation.sqlite(path), 0, 2**62, None)
    assert rows == []
