"""The spool: durable reserve, group commit, write failures, restart after SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tollhouse.config import parse_config
from tollhouse.metering.join import Applied
from tollhouse.metering.policy import Finalizer
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.spool import Spool, SpoolError, new_usage_id


def _rec(i: int = 0) -> UsageRecord:
    return UsageRecord(
        usage_id=new_usage_id(),
        customer=f"c{i % 3}",
        plan="pro",
        feature="search",
        units={"requests": 1},
        admitted_at_ms=1_700_000_000_000 + i,
        state=UsageRecord.RESERVED,
    )


def _spool(path: Path, **kw: Any) -> Spool:
    fin = Finalizer(parse_config({}))
    applied: list[Applied] = []
    return Spool(path, finalizer=lambda: fin, on_applied=applied.append, **kw)


async def test_reserve_survives_close_and_reopen(tmp_path: Path) -> None:
    """A reserved record is on disk after close without any flush, and reads back intact."""
    spool = _spool(tmp_path, group_commit_ms=1)
    await spool.open()
    rec = _rec()
    await spool.reserve(rec)
    await spool.close()
    again = _spool(tmp_path)
    await again.open()
    got = await again.get(rec.usage_id)
    await again.close()
    assert got == rec
    assert got is not None
    assert got.state == UsageRecord.RESERVED


async def test_group_commit_batches_concurrent_reserves(tmp_path: Path) -> None:
    """300 concurrent reserves are written with far fewer fdatasyncs than records."""
    spool = _spool(tmp_path, group_commit_ms=20)
    await spool.open()
    before = spool.log.commits
    await asyncio.gather(*(spool.reserve(_rec(i)) for i in range(300)))
    commits = spool.log.commits - before
    counts = await spool.counts()
    await spool.close()
    assert counts["RESERVED"] == 300
    assert 1 <= commits <= 30


async def test_closed_spool_raises_spool_error(tmp_path: Path) -> None:
    """Reserving on a closed spool is a SpoolError, never a silent success."""
    spool = _spool(tmp_path)
    await spool.open()
    await spool.close()
    with pytest.raises(SpoolError):
        await spool.reserve(_rec())


async def test_duplicate_usage_id_is_refused_and_original_kept(tmp_path: Path) -> None:
    """A second reserve with the same usage_id fails alone; the first record stays."""
    spool = _spool(tmp_path)
    await spool.open()
    rec = _rec()
    await spool.reserve(rec)
    other = _rec(1)
    clash = UsageRecord()
    clash.CopyFrom(rec)
    clash.customer = "mallory"
    results = await asyncio.gather(
        spool.reserve(clash), spool.reserve(other), return_exceptions=True
    )
    got = await spool.get(rec.usage_id)
    await spool.close()
    assert isinstance(results[0], SpoolError)
    assert results[1] is None
    assert got is not None
    assert got.customer == rec.customer


_FULL_CHILD = textwrap.dedent("""
    import asyncio, resource, signal, sys
    from tollhouse.config import parse_config
    from tollhouse.metering.policy import Finalizer
    from tollhouse.metering.schema import UsageRecord
    from tollhouse.metering.spool import Spool, SpoolError, new_usage_id

    async def main():
        fin = Finalizer(parse_config({}))
        spool = Spool(sys.argv[1], finalizer=lambda: fin, on_applied=lambda a: None)
        await spool.open()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))
        failed = 0
        while failed < 3:
            uid = new_usage_id()
            try:
                await spool.reserve(UsageRecord(usage_id=uid, customer="c", feature="f",
                                                admitted_at_ms=1, state=UsageRecord.RESERVED))
            except SpoolError:
                failed += 1
                print("FAILED", flush=True)
            else:
                print(uid, flush=True)
        await spool.close()

    asyncio.run(main())
""")


def test_full_disk_raises_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    """A full disk (a file size limit: EFBIG like ENOSPC) raises SpoolError; nothing OK is lost.

    The failed batch is cut back off the segment, so the records acknowledged before it read
    back intact, and the log is not left with a torn record.
    """
    script = tmp_path / "child.py"
    script.write_text(_FULL_CHILD)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "spool")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    ok = [u for u in out if u != "FAILED"]
    assert out.count("FAILED") == 3
    assert len(ok) > 10

    async def check() -> list[str]:
        spool = _spool(tmp_path / "spool")
        await spool.open()
        missing = [u for u in ok if await spool.get(u) is None]
        await spool.close()
        return missing

    assert asyncio.run(check()) == []


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from tollhouse.config import parse_config
    from tollhouse.metering.policy import Finalizer
    from tollhouse.metering.schema import UsageRecord
    from tollhouse.metering.spool import Spool, new_usage_id

    async def one(spool):
        uid = new_usage_id()
        await spool.reserve(UsageRecord(usage_id=uid, customer="c", feature="f",
                                        admitted_at_ms=1, state=UsageRecord.RESERVED))
        sys.stdout.write(uid + "\\n")
        sys.stdout.flush()

    async def main():
        fin = Finalizer(parse_config({}))
        spool = Spool(sys.argv[1], finalizer=lambda: fin, on_applied=lambda a: None,
                      group_commit_ms=1)
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
    proc = subprocess.Popen(
        [sys.executable, str(script), str(spool_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while len(lines) < 400:
        line = proc.stdout.readline()
        assert line, "the child exited early"
        lines.append(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lines += proc.stdout.readlines()
    proc.stdout.close()
    acked = [ln.strip() for ln in lines if ln.endswith("\n") and ln.strip()]

    async def check() -> list[str]:
        spool = _spool(spool_dir)
        await spool.open()
        missing = [u for u in acked if await spool.get(u) is None]
        await spool.close()
        return missing

    assert len(acked) >= 400
    assert asyncio.run(check()) == []


async def test_cancelled_reserve_is_voided_not_billed(tmp_path: Path) -> None:
    """A reserve whose caller was cancelled (Check deadline) ends VOIDED and not billable."""
    spool = _spool(tmp_path, group_commit_ms=50)
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


async def test_reserve_past_its_deadline_times_out_and_is_voided(tmp_path: Path) -> None:
    """A reservation not durable within deadline_s raises TimeoutError and is never billed."""
    spool = _spool(tmp_path, group_commit_ms=200)  # the writer holds the batch for 200 ms
    await spool.open()
    rec, on_time = _rec(1), _rec(2)
    with pytest.raises(TimeoutError):
        await spool.reserve(rec, deadline_s=0.02)
    await spool.reserve(on_time, deadline_s=5.0)  # the same timer leaves a later waiter alone
    got, kept = await spool.get(rec.usage_id), await spool.get(on_time.usage_id)
    await spool.close()
    assert got is not None
    assert got.state == UsageRecord.VOIDED
    assert not got.billable
    assert kept is not None
    assert kept.state == UsageRecord.RESERVED
