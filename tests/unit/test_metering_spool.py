"""The spool: durable reserve, group commit, write failures, restart after SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.spool import Spool, SpoolError, new_usage_id


def _rec(i: int = 0) -> UsageRecord:
    return UsageRecord(
        usage_id=new_usage_id(), customer=f"c{i % 3}", plan="pro", feature="search",
        units={"requests": 1}, admitted_at_ms=1_700_000_000_000 + i, state=UsageRecord.RESERVED,
    )


async def test_reserve_survives_close_and_reopen(tmp_path: Path) -> None:
    """A reserved record is on disk after close without any flush, and reads back intact."""
    spool = Spool(tmp_path, group_commit_ms=1)
    await spool.open()
    rec = _rec()
    await spool.reserve(rec)
    await spool.close()
    again = Spool(tmp_path)
    await again.open()
    got = await again.get(rec.usage_id)
    await again.close()
    assert got == rec
    assert got is not None
    assert got.state == UsageRecord.RESERVED


async def test_group_commit_batches_concurrent_reserves(tmp_path: Path) -> None:
    """300 concurrent reserves are committed in far fewer transactions than records."""
    spool = Spool(tmp_path, group_commit_ms=20)
    await spool.open()
    before = spool.stats.commits
    await asyncio.gather(*(spool.reserve(_rec(i)) for i in range(300)))
    commits = spool.stats.commits - before
    counts = await spool.counts()
    await spool.close()
    assert spool.stats.reserves == 300
    assert counts["RESERVED"] == 300
    assert 1 <= commits <= 30


async def test_closed_spool_raises_spool_error(tmp_path: Path) -> None:
    """Reserving on a closed spool is a SpoolError, never a silent success."""
    spool = Spool(tmp_path)
    await spool.open()
    await spool.close()
    with pytest.raises(SpoolError):
        await spool.reserve(_rec())


async def test_duplicate_usage_id_is_refused_and_original_kept(tmp_path: Path) -> None:
    """A second reserve with the same usage_id fails alone; the first record stays."""
    spool = Spool(tmp_path)
    await spool.open()
    rec = _rec()
    await spool.reserve(rec)
    other = _rec(1)
    clash = UsageRecord()
    clash.CopyFrom(rec)
    clash.customer = "mallory"
    results = await asyncio.gather(spool.reserve(clash), spool.reserve(other),
                                   return_exceptions=True)
    got = await spool.get(rec.usage_id)
    await spool.close()
    assert isinstance(results[0], SpoolError)
    assert results[1] is None
    assert got is not None
    assert got.customer == rec.customer


async def test_full_spool_raises_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    """A full disk (simulated with SQLite's max_page_count) raises SpoolError; nothing OK is lost.

    ``max_page_count`` makes SQLite answer SQLITE_FULL exactly as it does when the filesystem is
    full, without needing a tiny filesystem on the test machine.
    """
    spool = Spool(tmp_path, group_commit_ms=0, max_pages=12)
    await spool.open()
    ok: list[str] = []
    failed = 0
    for i in range(2000):
        rec = _rec(i)
        try:
            await spool.reserve(rec)
        except SpoolError:
            failed += 1
            if failed >= 3:
                break
        else:
            ok.append(rec.usage_id)
    await spool.close()
    assert failed == 3
    assert ok
    reopened = Spool(tmp_path)
    await reopened.open()
    found = [await reopened.get(u) for u in ok]
    await reopened.close()
    assert all(r is not None for r in found)


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from tollhouse.metering.schema import UsageRecord
    from tollhouse.metering.spool import Spool, new_usage_id

    async def one(spool):
        uid = new_usage_id()
        await spool.reserve(UsageRecord(usage_id=uid, customer="c", feature="f",
                                        admitted_at_ms=1, state=UsageRecord.RESERVED))
        sys.stdout.write(uid + "\\n")
        sys.stdout.flush()

    async def main():
        spool = Spool(sys.argv[1], group_commit_ms=1)
        await spool.open()
        while True:
            await asyncio.gather(*(one(spool) for _ in range(16)))

    asyncio.run(main())
""")


def test_sigkill_loses_no_acknowledged_reservation(tmp_path: Path) -> None:
    """SIGKILL a process reserving in a loop: every id printed after reserve() returned is there."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    spool_dir = tmp_path / "spool"
    proc = subprocess.Popen([sys.executable, str(script), str(spool_dir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    while len(lines) < 400:
        line = proc.stdout.readline()
        assert line, "the child exited early"
        lines.append(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lines += proc.stdout.readlines()
    acked = [ln.strip() for ln in lines if ln.endswith("\n") and ln.strip()]

    async def check() -> list[str]:
        spool = Spool(spool_dir)
        await spool.open()
        missing = [u for u in acked if await spool.get(u) is None]
        await spool.close()
        return missing

    assert len(acked) >= 400
    assert asyncio.run(check()) == []


async def test_cancelled_reserve_is_voided_not_billed(tmp_path: Path) -> None:
    """A reserve whose caller was cancelled (Check deadline) ends VOIDED and not billable."""
    spool = Spool(tmp_path, group_commit_ms=50)
    await spool.open()
    rec = _rec()
    task = asyncio.create_task(spool.reserve(rec))
    await asyncio.sleep(0)  # the reserve is queued, waiting in the group-commit window
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    got = await spool.get(rec.usage_id)
    await spool.close()
    assert got is not None
    assert got.state == UsageRecord.VOIDED
    assert not got.billable
    assert dict(got.units) == {}
