"""The embedded limiter's counter file: counts survive restarts and crashes, within the bounds."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.support.quota_memory import NOW, limits, run, ts
from tollhouse.periods import period_for
from tollhouse.quota import Limits, open_limiter
from tollhouse.quota.counter_file import CounterFileError
from tollhouse.quota.memory import MemoryLimiter


def lim(path: Path, lease_size: int = 1000, now: float = NOW) -> MemoryLimiter:
    out = open_limiter(
        "memory", clock=lambda: now, instance="t", counters_file=path, lease_size=lease_size
    )
    assert isinstance(out, MemoryLimiter)
    return out


async def settled(m: MemoryLimiter) -> None:
    """Wait until the writer has committed everything (bounded: fails after 10 s)."""
    assert m.saver is not None
    deadline = time.monotonic() + 10
    while m.saver.busy:
        assert time.monotonic() < deadline, "the counter file was never written"
        await asyncio.sleep(0.01)


def rows(path: Path) -> dict[tuple[str, str, str], int]:
    conn = sqlite3.connect(path)
    try:
        got = conn.execute("SELECT customer, meter, period, units FROM counters").fetchall()
    finally:
        conn.close()
    return {(c, m, p): int(u) for c, m, p, u in got}


async def allowed(m: MemoryLimiter, n: int, lm: Limits, who: str = "c") -> int:
    return sum(a.allowed for a in await run(m, n, lm, who=who))


async def test_quota_holds_across_a_clean_restart(tmp_path: Path) -> None:
    """Quota 5, 3 used, restart: exactly 2 more are admitted (the issue's 4 was the bug)."""
    path = tmp_path / "counters.db"
    a = lim(path)
    await a.start()
    assert await allowed(a, 3, limits(5)) == 3
    await a.stop()
    assert rows(path) == {("c", "requests", "2026-11"): 3}  # exact: the lease came back
    b = lim(path)
    await b.start()
    try:
        assert await allowed(b, 4, limits(5)) == 2
        assert b.snapshot("c", limits(5), NOW) == {"requests": (5, 5)}
    finally:
        await b.stop()


async def test_a_crash_never_over_admits_and_under_admits_at_most_a_lease(tmp_path: Path) -> None:
    """No stop() (a crash): the next process counts the leased ceiling, so admitted <= Q.

    What it loses is the unspent lease: min(lease_size, room // 2) units at most.
    """
    path = tmp_path / "counters.db"
    a = lim(path, lease_size=10)
    await a.start()
    first = await allowed(a, 37, limits(100))
    await settled(a)
    ceiling = rows(path)[("c", "requests", "2026-11")]
    assert first == 37
    assert 37 <= ceiling <= 37 + 10
    b = lim(path, lease_size=10)  # a's writer is idle: the file is what a crash would leave
    await b.start()
    try:
        second = await allowed(b, 200, limits(100))
        assert first + second <= 100
        assert first + second >= 100 - 10
    finally:
        await b.stop()
        assert a.saver is not None
        await a.saver.stop([])  # end a's idle writer without writing anything


async def test_leases_shrink_near_the_quota_and_hot_path_commits_rarely(tmp_path: Path) -> None:
    """The ceiling never passes the quota (deny), and 1,000 admits cost a few commits, not 1,000."""
    path = tmp_path / "counters.db"
    m = lim(path, lease_size=100)
    writes = REGISTRY.get_sample_value("tollhouse_quota_counter_file_writes_total") or 0.0
    await m.start()
    try:
        for _ in range(10):
            assert await allowed(m, 100, limits(None), who="big") == 100
            await settled(m)
        assert await allowed(m, 30, limits(7), who="small") == 7
        await settled(m)
        got = rows(path)
        assert got[("small", "requests", "2026-11")] == 7
        assert 1000 <= got[("big", "requests", "2026-11")] <= 1100
        commits = (
            REGISTRY.get_sample_value("tollhouse_quota_counter_file_writes_total") or 0.0
        ) - writes
        assert commits <= 30  # ~2 per 100 units (a lease of 100, renewed at half)
    finally:
        await m.stop()


async def test_post_hoc_units_and_periods_are_kept_apart(tmp_path: Path) -> None:
    """Bytes units are written behind and survive; a new period starts from zero."""
    path = tmp_path / "counters.db"
    lm = limits(None, quotas={"requests": 10, "egress": 1000})
    a = lim(path)
    await a.start()
    assert await allowed(a, 2, lm) == 2
    a.add_usage("c", "egress", 600, lm, NOW)
    await a.stop()
    b = lim(path)
    await b.start()
    try:
        assert b.snapshot("c", lm, NOW) == {"requests": (2, 10), "egress": (600, 1000)}
        dec = ts(2026, 12, 2)
        assert b.snapshot("c", lm, dec) == {"requests": (0, 10), "egress": (0, 1000)}
        assert (await b.admit("c", ["requests"], lm, dec)).allowed
    finally:
        await b.stop()
    assert rows(path)[("c", "requests", period_for(dec, None).key)] == 1


async def test_refund_gives_a_unit_back_in_its_own_period_only(tmp_path: Path) -> None:
    """refund() of a voided admission frees one unit now; one from last period frees nothing."""
    m = lim(tmp_path / "counters.db")
    await m.start()
    try:
        lm = limits(3)
        assert await allowed(m, 4, lm) == 3
        assert m.refund("c", ["requests"], lm, ts(2026, 10, 31, 23)) == 0
        assert await allowed(m, 1, lm) == 0
        assert m.refund("c", ["requests"], lm, NOW - 5) == 1
        assert m.refund("nobody", ["requests"], lm, NOW) == 0
        assert await allowed(m, 2, lm) == 1
    finally:
        await m.stop()


async def test_an_unusable_counter_file_stops_the_start_with_its_path(tmp_path: Path) -> None:
    """A counter file that cannot be created is a clear error naming it, not a silent reset."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    m = lim(blocker / "counters.db")
    with pytest.raises(CounterFileError, match="not-a-dir"):
        await m.start()


def test_default_counters_file_is_beside_the_spool(tmp_path: Path) -> None:
    """``counters_file`` defaults to tollhouse-counters.db beside the spool directory."""
    from tollhouse.config import counters_file, load_config

    cfg_path = tmp_path / "t.yaml"
    cfg_path.write_text("metering: {spool: data/spool}\n")
    assert counters_file(load_config(cfg_path)) == tmp_path / "data" / "tollhouse-counters.db"
    cfg_path.write_text("counters_file: state/c.db\n")
    assert counters_file(load_config(cfg_path)) == tmp_path / "state" / "c.db"
