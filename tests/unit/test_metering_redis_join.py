"""The shared join in Redis: facts of several replicas meet there, each record finalised once."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.servers import RedisServer
from tollhouse.config import Config, parse_config
from tollhouse.metering import LogEntry, Metering
from tollhouse.metering.schema import FIELD_RECORD, STREAM_KEY, UsageRecord
from tollhouse.metering.sinks import SinkError


@pytest.fixture
async def url(redis_server: RedisServer) -> str:
    """The session Redis, emptied for this test."""
    r = aioredis.Redis.from_url(redis_server.url)
    await r.flushdb()
    await r.aclose()
    return redis_server.url


def _cfg(tmp: Path, name: str, url: str) -> Config:
    return parse_config(
        {
            "meters": {"requests": {}, "tokens": {"from_response_header": "x-usage-tokens"}},
            "features": {"llm": {"rules": [{"path": "/v1/llm"}], "meters": ["requests", "tokens"]}},
            "metering": {"spool": str(tmp / name), "meter": url, "unconfirmed_after_s": 30},
        }
    )


async def _stream(url: str) -> list[UsageRecord]:
    r = aioredis.Redis.from_url(url)
    entries = await r.xrange(STREAM_KEY)
    await r.aclose()
    return [UsageRecord.FromString(f[FIELD_RECORD.encode()]) for _, f in entries]


async def _reserve(m: Metering, n: int) -> list[UsageRecord]:
    out = []
    for i in range(n):
        rec = m.build_reservation(
            customer="acme",
            plan="pro",
            feature="llm",
            method="POST",
            path="/v1/llm",
            request_id=f"rid-{m.remote}-{i}",
            decision_id="d",
        )
        await m.reserve(rec)
        out.append(rec)
    return out


def _served(uid: str | None, tokens: int, request_id: str = "") -> LogEntry:
    return LogEntry(
        uid,
        response_code=200,
        upstream_served=True,
        request_id=request_id,
        response_headers={"x-usage-tokens": str(tokens)},
    )


async def test_access_log_on_the_other_replica_confirms_with_header_units(
    tmp_path: Path,
    url: str,
) -> None:
    """A admits, B receives the access log: every record CONFIRMED once, tokens included.

    Whichever replica's consumer finalises a record calls its on_confirmed hook with the tokens
    (the post-hoc quota units: with shared counters, any replica adding them is right), once per
    record; a duplicate entry after finalisation is ignored; the stream holds each id once.
    """
    now = [2_000_000_000.0]
    a = Metering(_cfg(tmp_path, "a", url), clock=lambda: now[0], instance="a")
    b = Metering(_cfg(tmp_path, "b", url), clock=lambda: now[0], instance="b")
    seen: list[UsageRecord] = []
    a.on_confirmed = b.on_confirmed = seen.append
    await a.start()
    await b.start()
    recs = await _reserve(a, 20)
    await b.ingest([_served(r.usage_id, 100 + i) for i, r in enumerate(recs)])
    await b.tick()  # B's served facts wait in Redis for their reservations
    await a.tick()  # A's reservations meet them: joined
    await b.tick()  # B finalises
    await b.ingest([_served(recs[0].usage_id, 999)])
    for m in (a, b, a, b):
        await m.tick()
    await a.stop(deadline_s=2)
    await b.stop(deadline_s=2)
    got = await _stream(url)
    assert sorted(r.usage_id for r in got) == sorted(r.usage_id for r in recs)
    by_id = {r.usage_id: r for r in got}
    for i, rec in enumerate(recs):
        final = by_id[rec.usage_id]
        assert final.state == UsageRecord.CONFIRMED
        assert dict(final.units) == {"requests": 1, "tokens": 100 + i}
        assert final.instance == "a"
    assert sorted(r.units["tokens"] for r in seen) == [100 + i for i in range(20)]


async def test_grace_sweep_and_orphans_are_decided_once(tmp_path: Path, url: str) -> None:
    """Unlogged reservations end UNCONFIRMED once though both replicas sweep; orphans never bill.

    A served fact whose reservation never arrives is dropped after the grace period; an entry
    without metadata voids the pending reservation of its request id, on whichever replica.
    """
    now = [2_000_000_000.0]
    a = Metering(_cfg(tmp_path, "a", url), clock=lambda: now[0], instance="a")
    b = Metering(_cfg(tmp_path, "b", url), clock=lambda: now[0], instance="b")
    orphans: list[int] = []
    a.on_orphans = b.on_orphans = orphans.append  # usage.unattributed hears of each once
    await a.start()
    await b.start()
    recs = await _reserve(a, 6)
    await a.tick()
    await b.ingest(
        [
            LogEntry(None, response_code=503, request_id=recs[0].request_id),
            _served("0123456789abcdef0123456789abcdef", 5),
        ]
    )
    await b.tick()
    now[0] += 31
    for m in (a, b, a, b):
        await m.tick()
    assert orphans == [1]
    await a.stop(deadline_s=2)
    await b.stop(deadline_s=2)
    got = await _stream(url)
    states = sorted(UsageRecord.State.Name(r.state) for r in got)
    assert states == ["UNCONFIRMED"] * 5 + ["VOIDED"]
    assert sorted(r.usage_id for r in got) == sorted(r.usage_id for r in recs)
    assert all(r.billable == (r.state == UsageRecord.UNCONFIRMED) for r in got)


async def test_void_by_request_id_before_its_reservation_arrives(tmp_path: Path, url: str) -> None:
    """An entry without metadata that reaches Redis before its reservation still voids it."""
    now = [2_000_000_000.0]
    a = Metering(_cfg(tmp_path, "a", url), clock=lambda: now[0], instance="a")
    b = Metering(_cfg(tmp_path, "b", url), clock=lambda: now[0], instance="b")
    await a.start()
    await b.start()
    rec = a.build_reservation(
        customer="acme",
        plan="pro",
        feature="llm",
        method="POST",
        path="/v1/llm",
        request_id="rid-late",
        decision_id="d",
    )
    await b.ingest([LogEntry(None, response_code=503, request_id="rid-late")])
    await b.tick()  # the void waits in Redis under its request id
    await a.reserve(rec)
    await a.tick()
    await b.tick()
    await a.stop(deadline_s=2)
    await b.stop(deadline_s=2)
    got = await _stream(url)
    assert [(r.usage_id, r.state, r.billable) for r in got] == [
        (rec.usage_id, UsageRecord.VOIDED, False)
    ]


async def test_a_redis_restarted_empty_gets_its_consumer_group_back(
    tmp_path: Path,
    url: str,
) -> None:
    """Redis loses everything (restart without persistence, FLUSHALL) under a running replica.

    The finaliser's consumer group is gone with it; the replica creates it again after one
    failed round (logged ``redis_join.group_lost``), so records admitted afterwards are still
    finalised into the meter stream, each once.
    """
    now = [2_000_000_000.0]
    m = Metering(_cfg(tmp_path, "a", url), clock=lambda: now[0], instance="a")
    await m.start()
    first = await _reserve(m, 3)
    await m.ingest([_served(r.usage_id, 1) for r in first])
    for _ in range(3):
        await m.tick()
    assert {r.usage_id for r in await _stream(url)} == {r.usage_id for r in first}
    r = aioredis.Redis.from_url(url)
    await r.flushall()
    await r.aclose()
    later = await _reserve(m, 4)
    await m.ingest([_served(rec.usage_id, 1) for rec in later])
    failed = 0
    for _ in range(4):
        try:
            await m.tick()
        except SinkError:  # the forwarder logs this round and retries (NOGROUP once)
            failed += 1
    assert failed == 1
    await m.stop(deadline_s=2)
    streamed = [rec.usage_id for rec in await _stream(url)]
    assert sorted(streamed) == sorted(rec.usage_id for rec in later)
