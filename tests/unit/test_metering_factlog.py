"""The fact log: framing, torn tails, bad checksums, rotation, deletion once acknowledged."""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path

from prometheus_client import REGISTRY

from tollhouse.config import parse_config
from tollhouse.metering import LogEntry, Metering, SqliteMeterSink
from tollhouse.metering.factlog import MAGIC, FactLog, Written, scan, segment_path


def _frame(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def _corrupt_count() -> float:
    return REGISTRY.get_sample_value("tollhouse_factlog_corrupt_total") or 0.0


async def _write(directory: Path, payloads: list[bytes], **kw: int) -> FactLog:
    seen: list[Written] = []
    flog = FactLog(directory, on_durable=seen.append, **kw)
    await asyncio.to_thread(flog.open)
    flog.start()
    for p in payloads:
        fut = flog.append([p], [p])
        assert fut is not None
        await fut
    await flog.close()
    assert [m for w in seen for m in w.metas] == payloads
    return flog


async def test_records_read_back_in_order(tmp_path: Path) -> None:
    """Appended payloads come back from scan in order, each checked, in one synced segment."""
    payloads = [f"fact-{i}".encode() for i in range(50)]
    flog = await _write(tmp_path, payloads)
    assert [p for _, p in scan(tmp_path, repair=False)] == payloads
    data = segment_path(tmp_path, flog.active).read_bytes()
    assert data.startswith(MAGIC)
    assert data[len(MAGIC) : len(MAGIC) + 8] == struct.pack("<II", 6, zlib.crc32(b"fact-0"))


async def test_torn_tail_is_cut_on_open(tmp_path: Path) -> None:
    """A record cut short by a crash is dropped and truncated away; the ones before it stay."""
    flog = await _write(tmp_path, [b"one", b"two"])
    path = segment_path(tmp_path, flog.active)
    good = path.stat().st_size
    with path.open("ab") as f:
        f.write(_frame(b"three-is-torn")[:-4])
    assert [p for _, p in scan(tmp_path, repair=False)] == [b"one", b"two"]
    assert path.stat().st_size > good  # a read-only scan changes nothing
    assert [p for _, p in scan(tmp_path, repair=True)] == [b"one", b"two"]
    assert path.stat().st_size == good


async def test_bad_checksum_in_the_middle_is_skipped_and_counted(tmp_path: Path) -> None:
    """A corrupt record between good ones is skipped and counted; the good ones after it stay."""
    flog = await _write(tmp_path, [b"first", b"second-to-corrupt", b"third", b"fourth"])
    path = segment_path(tmp_path, flog.active)
    data = bytearray(path.read_bytes())
    at = data.index(b"second-to-corrupt")
    data[at + 3] ^= 0xFF  # flip a payload byte: the CRC no longer matches
    path.write_bytes(bytes(data))
    before = _corrupt_count()
    got = [p for _, p in scan(tmp_path, repair=True)]
    assert got == [b"first", b"third", b"fourth"]
    assert _corrupt_count() - before == 1
    assert path.stat().st_size == len(data)  # nothing after the bad record was cut


async def test_segments_rotate_by_size(tmp_path: Path) -> None:
    """With a small segment size the log spreads over several files, read back in order."""
    payloads = [bytes([i % 251]) * 300 for i in range(40)]
    flog = await _write(tmp_path, payloads, segment_bytes=2048)
    files = sorted(await asyncio.to_thread(lambda: list(tmp_path.glob("facts-*.log"))))
    assert len(files) >= 5
    assert flog.active == int(files[-1].name[6:-4])
    assert [p for _, p in scan(tmp_path, repair=False)] == payloads


def _cfg(tmp: Path) -> object:
    return parse_config(
        {"metering": {"spool": str(tmp / "spool"), "meter": f"sqlite:///{tmp / 'meter.db'}"}}
    )


async def test_segments_are_deleted_once_every_fact_is_acknowledged(tmp_path: Path) -> None:
    """Sealed segments go once the meter has every record of theirs; unacknowledged ones stay."""
    m = Metering(
        _cfg(tmp_path),
        instance="i",  # type: ignore[arg-type]
        sink=SqliteMeterSink(tmp_path / "meter.db"),
    )
    m.spool.log._segment_bytes = 1024
    await m.spool.open()
    recs = []
    for _ in range(120):
        rec = m.build_reservation(
            customer="acme",
            plan="p",
            feature="any",
            method="GET",
            path="/",
            request_id="",
            decision_id="d",
        )
        await m.reserve(rec)
        recs.append(rec)
    spool_dir = tmp_path / "spool"
    segments_before = len(list(spool_dir.glob("facts-*.log")))
    await m.ingest(
        [LogEntry(r.usage_id, response_code=200, upstream_served=True) for r in recs[:60]]
    )
    await m.spool.counts()
    while await m.forward_once():
        pass
    await m.spool.counts()  # deletions are queued to the writer: applied when this returns
    left = sorted(spool_dir.glob("facts-*.log"))
    await m.stop(deadline_s=1)
    assert segments_before >= 6
    assert 1 <= len(left) < segments_before
    remaining = {p for _, p in scan(spool_dir, repair=False)}
    assert all(r.SerializeToString() in b"".join(remaining) for r in recs[60:])
