"""The Redis lease limiter against a real redis-server: exactness, replicas, outages, op counts."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.servers import RedisServer
from tests.support.quota import SLACK_S, customer, granted, limits, make
from tollhouse.periods import period_for
from tollhouse.quota import Limits
from tollhouse.quota.limiter import Admission, Ticket
from tollhouse.quota.redis_leases import RedisLeaseLimiter

BACKOFF_S = 0.2  # the limiter's circuit after a failed call, short so warm() polls past it


@pytest.fixture
async def one(redis_server: RedisServer) -> AsyncIterator[RedisLeaseLimiter]:
    lim = make(redis_server.url, "one", lease_size=100, timeout_s=SLACK_S)
    await lim.start()
    yield lim
    await lim.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="th-quota-redis-"))).start()
    yield server
    if server.proc is not None:
        server.resume()
    server.stop()


async def test_one_replica_admits_exactly_q(one: RedisLeaseLimiter, redis_server: Any) -> None:
    """A quota of 1000 with one Redis replica admits exactly 1000 of 1500 requests."""
    c, lm = customer(), limits(1000)
    out = [await one.admit(c, ["requests"], lm, time.time()) for _ in range(1500)]
    assert sum(a.allowed for a in out) == 1000
    assert all(a.allowed for a in out[:1000])
    assert {a.code for a in out[1000:]} == {"quota_exceeded"}
    assert granted(redis_server.url, c) == 1000
    assert one.snapshot(c, lm, time.time()) == {"requests": (1000, 1000)}


async def test_a_concurrent_burst_admits_exactly_the_quota(redis_server: RedisServer) -> None:
    """300 concurrent requests against a quota of 100 with leases of 10: exactly 100 admitted.

    A request whose refill's units went to other requests first leases again (until the
    deadline) instead of being refused while Redis still has room.
    """
    lim = make(redis_server.url, "burst", lease_size=10, timeout_s=SLACK_S)
    await lim.start()
    c = customer()

    async def one() -> Admission:
        return await lim.admit(c, ["requests"], limits(100), time.time())

    out = await asyncio.gather(*(one() for _ in range(300)))
    await lim.stop()
    assert sum(a.allowed for a in out) == 100
    assert {a.code for a in out if not a.allowed} == {"quota_exceeded"}
    assert granted(redis_server.url, c) == 100


async def test_two_replicas_share_the_quota(redis_server: RedisServer) -> None:
    """Two replicas under interleaved concurrent load never admit more than Q, and reach Q."""
    a = make(redis_server.url, "a", lease_size=40, timeout_s=SLACK_S)
    b = make(redis_server.url, "b", lease_size=40, timeout_s=SLACK_S)
    await a.start()
    await b.start()
    c, lm, q = customer(), limits(500), 500
    try:
        admitted = 0
        for _ in range(40):  # 40 rounds x 20 concurrent admits, split over both replicas
            batch = [(a if i % 2 else b).admit(c, ["requests"], lm, time.time()) for i in range(20)]
            admitted += sum(x.allowed for x in await asyncio.gather(*batch))
            held = sum(
                ctr.left
                for lim in (a, b)
                for cu in lim._customers.values()
                for ctr in cu.counters.values()
            )
            # Proven bound: over-admission 0; under-admission = units leased but unspent.
            assert admitted <= q
            assert admitted + held <= q
        assert admitted == q
        assert granted(redis_server.url, c) == q
    finally:
        await a.stop()
        await b.stop()


async def test_stop_returns_unspent_lease_units(redis_server: RedisServer) -> None:
    """Units leased but not spent go back to Redis on stop(), so another replica can use them."""
    c, lm = customer(), limits(100)
    a = make(redis_server.url, "a", lease_size=40, timeout_s=SLACK_S)
    await a.start()
    assert (await a.admit(c, ["requests"], lm, time.time())).allowed
    assert granted(redis_server.url, c) > 1
    await a.stop()
    assert granted(redis_server.url, c) == 1
    b = make(redis_server.url, "b", lease_size=40, timeout_s=SLACK_S)
    await b.start()
    try:
        out = [await b.admit(c, ["requests"], lm, time.time()) for _ in range(120)]
        assert sum(x.allowed for x in out) == 99
    finally:
        await b.stop()


async def test_release_returns_unit_to_lease(one: RedisLeaseLimiter) -> None:
    """release() puts the unit back into the local lease; the quota still admits exactly Q."""
    c, lm = customer(), limits(10)
    out = [await one.admit(c, ["requests"], lm, time.time()) for _ in range(10)]
    assert all(x.allowed for x in out)
    assert not (await one.admit(c, ["requests"], lm, time.time())).allowed
    one.release(out[3])
    one.release(out[3])
    assert (await one.admit(c, ["requests"], lm, time.time())).allowed
    assert not (await one.admit(c, ["requests"], lm, time.time())).allowed


async def test_plan_upgrade_keeps_usage_in_redis(one: RedisLeaseLimiter) -> None:
    """A larger quota mid-period applies at once and counts the units already used."""
    c = customer()
    assert (
        sum(
            [(await one.admit(c, ["requests"], limits(20), time.time())).allowed for _ in range(30)]
        )
        == 20
    )
    pro = limits(50, plan="pro")
    assert (
        sum([(await one.admit(c, ["requests"], pro, time.time())).allowed for _ in range(60)]) == 30
    )


async def test_overage_allow_in_redis(one: RedisLeaseLimiter) -> None:
    """With overage allow, requests past the quota are admitted and flagged overage."""
    c, lm = customer(), limits(5, overage="allow")
    out = [await one.admit(c, ["requests"], lm, time.time()) for _ in range(8)]
    assert all(x.allowed for x in out)
    assert [x.overage for x in out] == [False] * 5 + [True] * 3


async def test_redis_ops_per_admit_at_steady_state(redis_server: RedisServer) -> None:
    """Over 10,000 admits after warm-up, Redis round trips per admit stay <= 0.01."""
    lim = make(redis_server.url, "ops", timeout_s=SLACK_S)
    await lim.start()
    try:
        c, lm = customer(), limits(10**9)
        for _ in range(100):
            await lim.admit(c, ["requests"], lm, time.time())
        before = lim.redis_calls
        for i in range(10_000):
            assert (await lim.admit(c, ["requests"], lm, time.time())).allowed
            if i % 1000 == 0:
                await asyncio.sleep(0)  # let background refills run, as a server's loop would
        calls = lim.redis_calls - before
        assert calls / 10_000 <= 0.01, calls
    finally:
        await lim.stop()


async def timed_admits(
    lim: RedisLeaseLimiter, c: str, lm: Limits, n: int
) -> tuple[list[Any], float]:
    loop = asyncio.get_running_loop()
    out, worst = [], 0.0
    for _ in range(n):
        t0 = loop.time()
        out.append(await lim.admit(c, ["requests"], lm, time.time()))
        worst = max(worst, loop.time() - t0)
    return out, worst


def held(lim: RedisLeaseLimiter, lease_size: int = 20) -> int:
    """Units this replica may still spend: its leases, plus a lease whose reply is in flight."""
    return sum(
        ctr.left + (lease_size if ctr.refill is not None else 0)
        for cu in lim._customers.values()
        for ctr in cu.counters.values()
    )


async def load_with_pause(
    lim: RedisLeaseLimiter, c: str, lm: Limits, server: RedisServer, n: int = 240
) -> tuple[list[Any], list[Any], int, float]:
    """Run 8 workers, pause Redis after n/4 admits; return before, after, held, worst latency."""
    loop = asyncio.get_running_loop()
    before: list[Any] = []
    after: list[Any] = []
    state = {"worst": 0.0, "held": -1}

    async def worker() -> None:
        for _ in range(n // 8):
            if state["held"] < 0 and len(before) >= n // 4:
                state["held"] = held(lim)
                server.pause()
            target = before if state["held"] < 0 else after
            t0 = loop.time()
            target.append(await lim.admit(c, ["requests"], lm, time.time()))
            state["worst"] = max(state["worst"], loop.time() - t0)
            await asyncio.sleep(0.001)

    await asyncio.gather(*(worker() for _ in range(8)))
    return before, after, int(state["held"]), state["worst"]


async def eventually(check: Any, timeout_s: float = 5.0) -> None:
    """Poll ``check()`` until it is true (waits for the circuit to close and a tick to run)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.1)


async def test_redis_time_decides_the_period(one: RedisLeaseLimiter) -> None:
    """A replica whose clock is 40 days slow adopts Redis TIME and leases in the current period."""
    c, lm = customer(), limits(10)
    adm = await one.admit(c, ["requests"], lm, time.time() - 40 * 86400)
    assert adm.allowed
    assert isinstance(adm.ticket, Ticket)
    assert adm.ticket.period_key == period_for(time.time(), None).key
    assert abs(one._offset - 40 * 86400) < 5


async def warm(lim: RedisLeaseLimiter, c: str, lm: Limits) -> int:
    """Admit until this replica holds a lease, then let background refills settle."""
    allowed = 0

    async def leased() -> bool:
        nonlocal allowed
        adm = await lim.admit(c, ["requests"], lm, time.time())
        allowed += adm.allowed
        return adm.allowed and not adm.degraded

    # A timeout under machine load opens the circuit (BACKOFF_S): polling waits it out.
    await eventually(leased, timeout_s=20 * BACKOFF_S)
    await eventually(lambda: _settled(lim))
    assert allowed
    return allowed


async def _settled(lim: RedisLeaseLimiter) -> bool:
    """No background refill of ``lim`` is still running."""
    return not lim._tasks


async def test_paused_redis_fail_closed(own_redis: RedisServer) -> None:
    """Redis paused mid-load: held leases are spent, then counters_unavailable; no admit blocks."""
    lim = make(own_redis.url, "fc", lease_size=20, timeout_s=0.05, backoff_s=BACKOFF_S)
    await lim.start()
    c, lm = customer(), limits(10**6)
    try:
        await warm(lim, c, lm)
        _, after, held_at_pause, worst = await load_with_pause(lim, c, lm, own_redis)
        assert worst < 0.5  # bound check of the timeout mechanism, not a benchmark
        allowed = [x for x in after if x.allowed]
        refused = [x for x in after if not x.allowed]
        assert len(allowed) <= held_at_pause  # only units leased before the pause
        assert refused
        assert {(x.code, x.retry_after_s, x.degraded) for x in refused} == {
            ("counters_unavailable", 1, False)
        }
        assert not any(x.degraded for x in allowed)
        own_redis.resume()

        async def admitted_again() -> bool:
            return (await lim.admit(c, ["requests"], lm, time.time())).allowed

        await eventually(admitted_again)
    finally:
        if own_redis.proc is not None:
            own_redis.resume()
        await lim.stop()


async def test_paused_redis_local_policy_degrades(own_redis: RedisServer) -> None:
    """With on_counter_error local, admits continue on the local share, flagged degraded."""
    lim = make(own_redis.url, "loc", lease_size=20, timeout_s=0.05, backoff_s=BACKOFF_S)
    await lim.start()
    c, lm = customer(), limits(100, on_counter_error="local")
    degraded = (
        REGISTRY.get_sample_value("tollhouse_quota_degraded_decisions_total", {"allowed": "true"})
        or 0.0
    )
    try:
        first = await warm(lim, c, lm)
        before, after, _, worst = await load_with_pause(lim, c, lm, own_redis)
        assert worst < 0.5  # bound check of the timeout mechanism, not a benchmark
        # One live replica: its local share is all that is left, so the quota still holds.
        assert first + sum(x.allowed for x in before + after) == 100
        flagged = [x for x in after if x.degraded and x.allowed]
        assert flagged
        assert REGISTRY.get_sample_value(
            "tollhouse_quota_degraded_decisions_total", {"allowed": "true"}
        ) == degraded + len(flagged)
        last = after[-1]
        assert (last.allowed, last.code, last.degraded) == (False, "quota_exceeded", True)
        own_redis.resume()

        async def reconciled() -> bool:  # the next tick adds the degraded units in Redis
            return granted(own_redis.url, c) == 100

        await eventually(reconciled)
    finally:
        if own_redis.proc is not None:
            own_redis.resume()
        await lim.stop()


async def test_dead_redis_fails_closed_fast(own_redis: RedisServer) -> None:
    """A killed Redis gives counters_unavailable for a customer with no lease, within the bound."""
    lim = make(own_redis.url, "dead", lease_size=20, timeout_s=0.05)
    await lim.start()
    own_redis.kill()
    try:
        out, worst = await timed_admits(lim, customer(), limits(10), 20)
        assert worst < 0.5  # bound check of the timeout mechanism, not a benchmark
        assert {x.code for x in out} == {"counters_unavailable"}
    finally:
        await lim.stop()


async def test_downgrade_gives_back_lease_and_applies_at_once(one: RedisLeaseLimiter) -> None:
    """A smaller quota mid-period drops the lease taken under the old one: no over-admission."""
    c = customer()
    assert (
        sum(
            [
                (await one.admit(c, ["requests"], limits(400), time.time())).allowed
                for _ in range(30)
            ]
        )
        == 30
    )
    small = limits(35, plan="tiny")
    admitted = 0
    for _ in range(60):  # the returned units reach Redis with the next background tick
        admitted += (await one.admit(c, ["requests"], small, time.time())).allowed
        await asyncio.sleep(0.05)
    assert admitted == 5
