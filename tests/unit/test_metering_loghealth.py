"""The fact log's write health: unhealthy when it cannot write, healthy again by itself.

Write failures are real (CI runs as root, so permissions prove nothing): the spool directory
removed or replaced by a file, and a file size limit (``RLIMIT_FSIZE``) in a subprocess.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tollhouse.metering.factlog import FactLog, SpoolError, Written, scan


async def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


async def _opened(directory: Path) -> tuple[FactLog, list[Written]]:
    seen: list[Written] = []
    flog = FactLog(directory, on_durable=seen.append, retry_s=0.05)
    await asyncio.to_thread(flog.open)
    flog.start()
    return flog, seen


async def _append(flog: FactLog, payload: bytes) -> None:
    fut = flog.append([payload], [payload])
    assert fut is not None
    await fut


async def test_directory_replaced_by_a_file_is_unhealthy_until_it_can_write(
    tmp_path: Path,
) -> None:
    """The spool removed and a file put in its place: unhealthy with no write, appends fail.

    Once the file is gone the writer creates the directory and a fresh segment by itself, and
    the next append is durable there.
    """
    spool = tmp_path / "spool"
    flog, seen = await _opened(spool)
    await _append(flog, b"before")
    shutil.rmtree(spool)
    spool.write_text("not a directory")
    assert await _until(lambda: not flog.health.ok)
    assert "deleted" in (flog.health.error or "")
    assert flog.health.failures >= 1
    with pytest.raises(SpoolError):
        await _append(flog, b"refused")
    spool.unlink()
    assert await _until(lambda: flog.health.ok)
    await _append(flog, b"after")
    await flog.close()
    assert [p for _, p in scan(spool, repair=False)] == [b"after"]
    assert [m for w in seen for m in w.metas] == [b"before", b"after"]


async def test_open_where_the_directory_cannot_be_made_does_not_raise_and_recovers(
    tmp_path: Path,
) -> None:
    """A spool path that is a file at open: the log opens unhealthy (no exception), then heals."""
    spool = tmp_path / "spool"
    spool.write_text("in the way")
    flog, _ = await _opened(spool)
    assert not flog.health.ok
    assert flog.health.detail()["writable"] is False
    with pytest.raises(SpoolError):
        await _append(flog, b"refused")
    spool.unlink()
    assert await _until(lambda: flog.health.ok)
    await _append(flog, b"kept")
    await flog.close()
    assert [p for _, p in scan(spool, repair=False)] == [b"kept"]


async def test_a_barrier_completes_while_the_log_cannot_write(tmp_path: Path) -> None:
    """An empty append (the forwarder's barrier) is not failed by an outage: nothing to write."""
    spool = tmp_path / "spool"
    spool.write_text("in the way")
    flog, _ = await _opened(spool)
    assert not flog.health.ok
    await asyncio.wait_for(flog.barrier(), 10)
    await flog.close()


_FSIZE_CHILD = textwrap.dedent("""
    import asyncio, resource, signal, sys
    from tollhouse.metering.factlog import FactLog, SpoolError

    async def main():
        flog = FactLog(sys.argv[1], on_durable=lambda w: None, retry_s=0.05)
        await asyncio.to_thread(flog.open)
        flog.start()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        for i in range(200):
            try:
                await flog.append([b"x" * 200], [i])
            except SpoolError:
                print("FAILED", flog.health.ok, flush=True)
            else:
                print("OK", flog.health.ok, flush=True)
        await flog.close()

    asyncio.run(main())
""")


def test_file_size_limit_fails_a_batch_then_a_fresh_segment_takes_writes(tmp_path: Path) -> None:
    """EFBIG (like a full disk) fails its batch and marks the log unhealthy.

    The next append opens a fresh segment and succeeds: healthy again without a restart.
    """
    script = tmp_path / "child.py"
    script.write_text(_FSIZE_CHILD)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "spool")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert "FAILED False" in lines
    first = lines.index("FAILED False")
    assert lines[first + 1] == "OK True"
    segments = sorted((tmp_path / "spool").glob("facts-*.log"))
    assert len(segments) > 2
    assert all(p.stat().st_size <= 4096 for p in segments)
    assert sum(1 for _ in scan(tmp_path / "spool", repair=False)) == lines.count("OK True")
