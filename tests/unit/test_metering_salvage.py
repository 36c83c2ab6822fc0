"""`tollhouse spool check|salvage DIR`: report a damaged spool, rescue its stranded records.

Spools are written by the real Spool, damaged on disk, then read by the console script and by
a fresh Spool (what the next `serve` replays).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tollhouse.config import parse_config
from tollhouse.metering.factlog import segment_path
from tollhouse.metering.policy import Finalizer
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.spool import Spool, new_usage_id


def _spool(path: Path) -> Spool:
    fin = Finalizer(parse_config({}))
    return Spool(path, finalizer=lambda: fin, on_applied=lambda _: None)


async def _reserve(path: Path, n: int) -> list[str]:
    spool = _spool(path)
    await spool.open()
    ids = []
    for i in range(n):
        uid = new_usage_id()
        await spool.reserve(
            UsageRecord(
                usage_id=uid,
                customer="c",
                feature="f",
                admitted_at_ms=1_700_000_000_000 + i,
                state=UsageRecord.RESERVED,
            )
        )
        ids.append(uid)
    await spool.close()
    return ids


async def _replayed(path: Path, ids: list[str]) -> list[str]:
    spool = _spool(path)
    await spool.open()
    found = [u for u in ids if await spool.get(u) is not None]
    await spool.close()
    return found


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "tollhouse"
    return subprocess.run(
        [str(exe), "spool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_clean_spool_checks_ok(tmp_path: Path) -> None:
    """A spool written normally: exit 0, every record counted, nothing damaged."""
    asyncio.run(_reserve(tmp_path / "spool", 5))
    proc = _cli("check", str(tmp_path / "spool"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 reserved" in proc.stdout
    assert "0 damaged" in proc.stdout


def test_damaged_header_strands_records_until_salvaged(tmp_path: Path) -> None:
    """A segment whose magic is damaged is skipped by every start; salvage brings it back.

    check exits 1 naming it; salvage rewrites it (original kept in damaged/), and the next
    replay holds every reservation again; check is then clean.
    """
    spool = tmp_path / "spool"
    ids = asyncio.run(_reserve(spool, 20))
    seg = segment_path(spool, 1)
    data = bytearray(seg.read_bytes())
    data[0:4] = b"XXXX"
    seg.write_bytes(bytes(data))
    assert asyncio.run(_replayed(spool, ids)) == []  # stranded
    proc = _cli("check", str(spool))
    assert proc.returncode == 1, proc.stdout
    assert "facts-000000000001.log: 20 records (20 reserved); DAMAGED header" in proc.stdout
    assert "tollhouse spool salvage" in proc.stdout
    proc = _cli("salvage", str(spool))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "salvaged facts-000000000001.log: 20 records kept" in proc.stdout
    assert (spool / "damaged" / "facts-000000000001.log").read_bytes() == bytes(data)
    assert asyncio.run(_replayed(spool, ids)) == ids
    assert _cli("check", str(spool)).returncode == 0


def test_corrupt_record_is_reported_and_the_rest_kept(tmp_path: Path) -> None:
    """Bytes overwritten mid-segment: check names the offset; salvage keeps every good record."""
    spool = tmp_path / "spool"
    ids = asyncio.run(_reserve(spool, 30))
    seg = segment_path(spool, 1)
    data = bytearray(seg.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = b"\xff" * 16
    seg.write_bytes(bytes(data))
    proc = _cli("check", str(spool))
    assert proc.returncode == 1
    assert "CORRUPT" in proc.stdout
    assert _cli("salvage", str(spool)).returncode == 0
    assert _cli("check", str(spool)).returncode == 0
    kept = asyncio.run(_replayed(spool, ids))
    assert 26 <= len(kept) < 30  # one or two records under the damage are lost, no more


def test_salvage_refuses_while_a_process_holds_the_spool(tmp_path: Path) -> None:
    """A spool open in a running process (here: this one) is never rewritten: exit 2."""
    spool = tmp_path / "spool"
    asyncio.run(_reserve(spool, 3))
    seg = segment_path(spool, 1)
    seg.write_bytes(b"XXXX" + seg.read_bytes()[4:])
    before = seg.read_bytes()
    with seg.open("rb"):
        proc = _cli("salvage", str(spool))
    assert proc.returncode == 2
    assert "stop tollhouse first" in proc.stderr
    assert seg.read_bytes() == before


def test_missing_directory_is_exit_2(tmp_path: Path) -> None:
    """A directory that is not there: one line on stderr, exit 2, no traceback."""
    proc = _cli("check", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
