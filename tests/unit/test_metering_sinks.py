"""Meter sinks: SQLite dedupe, Redis Streams on a real redis-server, and a Redis outage."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from tests.servers import RedisServer, free_port
from tollhouse.config import MeterLocation, parse_config
from tollhouse.metering import Metering, RedisStreamSink, SinkError, SqliteMeterSink, open_sink
from tollhouse.metering.schema import FIELD_RECORD, FIELD_USAGE_ID, STREAM_KEY, UsageRecord


def _final(i: int, customer: str = "acme") -> UsageRecord:
    return UsageRecord(
        usage_id=f"u{i:06d}",
        customer=customer,
        plan="pro",
        feature="search",
        units={"requests": 1, "egress": 10 * i},
        admitted_at_ms=1_000 + i,
        state=UsageRecord.CONFIRMED,
        billable=True,
        finalized_at_ms=2_000 + i,
    )


async def test_sqlite_sink_dedupes_by_usage_id(tmp_path: Path) -> None:
    """Sending a batch twice (a retry after a lost ack) stores each usage_id and unit once."""
    sink = SqliteMeterSink(tmp_path / "meter.db")
    batch = [_final(i) for i in range(50)]
    await sink.send(batch)
    await sink.send([*batch[10:], _final(50)])
    await sink.close()
    with sqlite3.connect(tmp_path / "meter.db") as db:
        n, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT usage_id) FROM usage").fetchone()
        units = db.execute("SELECT SUM(units) FROM usage_units WHERE meter='egress'").fetchone()
        state = db.execute("SELECT state, billable FROM usage WHERE usage_id='u000001'").fetchone()
    assert (n, distinct) == (51, 51)
    assert units[0] == sum(10 * i for i in range(51))
    assert state == ("CONFIRMED", 1)


def test_open_sink_picks_the_kind_by_url(tmp_path: Path) -> None:
    """open_sink maps sqlite:/// and redis:// URLs to their sinks."""
    assert isinstance(open_sink(MeterLocation.parse(f"sqlite:///{tmp_path}/m.db")), SqliteMeterSink)
    assert isinstance(open_sink(MeterLocation.parse("redis://127.0.0.1:1/0")), RedisStreamSink)


async def test_redis_sink_xadds_each_record(redis_server: RedisServer) -> None:
    """Each record becomes one stream entry with the usage_id and the serialized record."""
    r = aioredis.Redis.from_url(redis_server.url)
    await r.delete(STREAM_KEY)
    sink = RedisStreamSink(redis_server.url)
    await sink.send([_final(i) for i in range(20)])
    await sink.close()
    entries = await r.xrange(STREAM_KEY)
    await r.aclose()
    assert len(entries) == 20
    _, fields = entries[3]
    rec = UsageRecord.FromString(fields[FIELD_RECORD.encode()])
    assert fields[FIELD_USAGE_ID.encode()] == b"u000003"
    assert rec == _final(3)


async def test_redis_sink_down_raises_sink_error() -> None:
    """With nothing listening, send raises SinkError (retryable), not a raw connection error."""
    sink = RedisStreamSink(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1)
    try:
        await sink.send([_final(1)])
    except SinkError:
        pass
    else:
        raise AssertionError("send to a dead Redis must fail")
    finally:
        await sink.close()


async def _wait(pred: Callable[[], Awaitable[bool]], what: str, limit_s: float = 60.0) -> None:
    for _ in range(int(limit_s / 0.05)):
        if await pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


async def test_redis_outage_loses_nothing(tmp_path: Path) -> None:
    """Kill Redis mid-forwarding, restart it on the same port: every record reaches the stream."""
    server = RedisServer(Path(tempfile.mkdtemp(prefix="th-redis-outage-")), appendonly=True)
    server.start()
    cfg = parse_config(
        {
            "metering": {
                "spool": str(tmp_path / "spool"),
                "meter": server.url,
                "unconfirmed_after_s": 1,
                "batch_size": 25,
                "flush_interval_ms": 10,
                "group_commit_ms": 1,
            }
        }
    )
    now = [1_900_000_000.0]
    m = Metering(cfg, clock=lambda: now[0], instance="t", max_backoff_s=0.3, send_timeout_s=2)
    r = aioredis.Redis.from_url(server.url, socket_timeout=2)
    ids: list[str] = []

    async def load(n: int) -> None:
        for _ in range(n):
            rec = m.build_reservation(
                customer="acme",
                plan="p",
                feature="search",
                method="GET",
                path="/x",
                request_id="",
                decision_id="d",
            )
            await m.reserve(rec)
            ids.append(rec.usage_id)
        now[0] += 5  # past the grace: the sweep finalises them as UNCONFIRMED (billed)

    try:
        await m.start()
        await load(600)

        async def some_sent() -> bool:
            return int(await r.xlen(STREAM_KEY)) > 0

        await _wait(some_sent, "the first records in the stream")
        server.kill()
        errors_before = REGISTRY.get_sample_value("tollhouse_meter_send_errors_total") or 0.0
        await load(400)  # admitted while the meter is down: they wait in the spool

        async def unsent_waiting() -> bool:
            errors = REGISTRY.get_sample_value("tollhouse_meter_send_errors_total") or 0.0
            return (await m.spool.counts())["unsent"] > 0 and errors > errors_before

        await _wait(unsent_waiting, "failed sends while records pile up in the spool")
        server.start()  # same port, same dir: the appendonly file brings back what was acked
        await r.aclose()  # its connection went with the killed server: close it, then reconnect
        r = aioredis.Redis.from_url(server.url, socket_timeout=2)

        async def all_sent() -> bool:
            c = await m.spool.counts()
            # With the Redis join, an empty outbox means Redis has the facts; the records
            # follow once the shared sweep and finaliser ran: wait for the stream too.
            return c["unsent"] == 0 and c["RESERVED"] == 0 and int(await r.xlen(STREAM_KEY)) >= 1000

        await _wait(all_sent, "the spool to drain into the restarted Redis")
        entries = await r.xrange(STREAM_KEY)
        got = {f[FIELD_USAGE_ID.encode()].decode() for _, f in entries}
        assert got == set(ids)
        assert len(ids) == 1000
    finally:
        await m.stop(deadline_s=1)
        await r.aclose()
        server.stop()
