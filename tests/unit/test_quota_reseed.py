"""Redis counters lost by a restart without persistence are re-seeded; voided units come back."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.servers import RedisServer
from tests.support.quota import SLACK_S, customer, granted, limits, make
from tollhouse.quota import Limits
from tollhouse.quota.redis_leases import RedisLeaseLimiter

pytestmark = pytest.mark.component  # starts its own redis-server


@pytest.fixture
def volatile_redis() -> Iterator[RedisServer]:
    """A redis-server without persistence (no RDB, no AOF): a restart forgets every key."""
    server = RedisServer(Path(tempfile.mkdtemp(prefix="th-reseed-"))).start()
    yield server
    server.stop()


def restart(server: RedisServer) -> None:
    """Stop Redis and start it again, empty, on the same port."""
    server.stop()
    server.start()
    assert granted(server.url, "anyone") == 0


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until true (background ticks); fails after 10 s naming ``what``."""
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


async def admit_until_back(lim: RedisLeaseLimiter, c: str, lm: Limits, n: int) -> int:
    """``n`` admits once Redis answers again (counters_unavailable while the circuit is open)."""
    deadline = time.monotonic() + 10
    ok = 0
    done = 0
    while done < n:
        adm = await lim.admit(c, ["requests"], lm, time.time())
        if adm.code == "counters_unavailable":
            assert time.monotonic() < deadline, "Redis never came back"
            await asyncio.sleep(0.1)
            continue
        ok += adm.allowed
        done += 1
    return ok


async def test_restart_without_persistence_does_not_reopen_the_quota(
    volatile_redis: RedisServer,
) -> None:
    """Quota 400, 300 admitted, Redis restarts empty: at most 100 more (the bug admitted 400)."""
    lim = make(volatile_redis.url, "rs", lease_size=20, timeout_s=SLACK_S)
    await lim.start()
    c, lm = customer(), limits(400)
    reseeds = REGISTRY.get_sample_value("tollhouse_quota_redis_reseeds_total") or 0.0
    try:
        first = await admit_until_back(lim, c, lm, 300)
        assert first == 300
        restart(volatile_redis)
        second = await admit_until_back(lim, c, lm, 300)
        assert first + second <= 400
        assert first + second >= 400 - 20  # under-admission: at most the unspent lease
        assert granted(volatile_redis.url, c) >= 300  # the counter came back, not from zero
        assert (REGISTRY.get_sample_value("tollhouse_quota_redis_reseeds_total") or 0.0) > reseeds
    finally:
        await lim.stop()


async def test_the_background_flush_reseeds_too(volatile_redis: RedisServer) -> None:
    """A counter this replica only flushes to (no lease asked) is re-seeded, not restarted at 0."""
    lim = RedisLeaseLimiter(
        volatile_redis.url,
        clock=time.time,
        instance="flush",
        lease_size=50,
        timeout_s=SLACK_S,
        heartbeat_s=0.2,
    )
    await lim.start()
    c, lm = customer(), limits(100)
    try:
        assert await admit_until_back(lim, c, lm, 10) == 10
        assert granted(volatile_redis.url, c) == 50  # one lease of 50 (room 100 // 2)
        restart(volatile_redis)
        assert lim.refund(c, ["requests"], lm, time.time()) == 1  # a flush of -1 is due
        await until(lambda: granted(volatile_redis.url, c) != 0, "the flush reached Redis")
        assert granted(volatile_redis.url, c) == 49  # seed 50, then the refund's -1
    finally:
        await lim.stop()


async def test_refund_returns_a_unit_to_the_shared_counter(volatile_redis: RedisServer) -> None:
    """A voided request's unit goes back to Redis: another replica can then admit one more."""
    # recheck_s=0: an exhausted replica asks Redis again at once (the default waits up to 1 s)
    a, b = (
        RedisLeaseLimiter(
            volatile_redis.url,
            clock=time.time,
            instance=name,
            lease_size=5,
            timeout_s=SLACK_S,
            heartbeat_s=0.2,
            recheck_s=0,
        )
        for name in ("refund-a", "refund-b")
    )
    await a.start()
    await b.start()
    c, lm = customer(), limits(6)
    try:
        assert await admit_until_back(a, c, lm, 10) == 6
        assert await admit_until_back(b, c, lm, 1) == 0
        assert a.refund(c, ["requests"], lm, time.time() - 86400 * 40) == 0  # another period
        assert b.refund(c, ["requests"], lm, time.time()) == 1  # b finalised a's void
        await until(lambda: granted(volatile_redis.url, c) == 5, "the refund reached Redis")
        assert await admit_until_back(a, c, lm, 3) == 1
    finally:
        await a.stop()
        await b.stop()
