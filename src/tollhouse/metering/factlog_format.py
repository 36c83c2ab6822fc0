"""The fact log's on-disk format: segment files, framed records, and recovery by scanning.

A segment is ``directory/facts-<seq>.log``: an 8-byte magic, then records
``u32 length | u32 crc32(payload) | payload`` (little endian). :func:`scan` reads them back and
says what it had to skip or cut; :mod:`tollhouse.metering.factlog` argues why that is durable.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tollhouse.logs import get_logger
from tollhouse.metering.metrics import FACTLOG_CORRUPT

__all__ = [
    "HEADER",
    "MAGIC",
    "MAX_RECORD",
    "SegmentRead",
    "frame",
    "parse",
    "read_segment",
    "scan",
    "segment_path",
    "segments",
]

log = get_logger(__name__)

MAGIC = b"THFACT1\n"
HEADER = struct.Struct("<II")
MAX_RECORD = 8 << 20  # a fact is ~100-300 bytes, an access-log message at most 4 MiB (gRPC)


def segment_path(directory: Path, seq: int) -> Path:
    """The file of segment ``seq``."""
    return directory / f"facts-{seq:012d}.log"


def segments(directory: Path) -> list[int]:
    """The segment numbers in ``directory``, oldest first."""
    out = []
    for p in directory.glob("facts-*.log"):
        with contextlib.suppress(ValueError):
            out.append(int(p.name[6:-4]))
    return sorted(out)


def _next_good(data: bytes, start: int) -> int | None:
    """The offset of the next record that checks out after a bad one, or None (a torn tail)."""
    end = len(data)
    for off in range(start, end - HEADER.size + 1):
        length, crc = HEADER.unpack_from(data, off)
        stop = off + HEADER.size + length
        if (
            0 < length <= MAX_RECORD
            and stop <= end
            and zlib.crc32(data[off + HEADER.size : stop]) == crc
        ):
            return off
    return None


@dataclass(slots=True)
class SegmentRead:
    """One segment's bytes, read: its good records and what had to be skipped or cut."""

    payloads: list[bytes] = field(default_factory=list)
    good_end: int = len(MAGIC)  # the end of the last good record: a torn tail starts here
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (offset, bytes) corrupt
    header_ok: bool = True


def read_segment(data: bytes, start: int = len(MAGIC)) -> SegmentRead:
    """Every good record of a segment's bytes from ``start``, oldest first, and the damage.

    Records are read from after the magic even when the magic itself is damaged
    (``header_ok`` False), which is what a salvage needs; :func:`scan` skips such a segment.
    """
    out = SegmentRead(header_ok=data.startswith(MAGIC))
    off = start
    end = len(data)
    while off + HEADER.size <= end:
        length, crc = HEADER.unpack_from(data, off)
        stop = off + HEADER.size + length
        if 0 < length <= MAX_RECORD and stop <= end:
            payload = data[off + HEADER.size : stop]
            if zlib.crc32(payload) == crc:
                out.payloads.append(payload)
                off = stop
                continue
        nxt = _next_good(data, off + 1)
        if nxt is None:
            break  # a torn tail: cut here
        out.skipped.append((off, nxt - off))
        off = nxt
    out.good_end = off
    return out


def parse(data: bytes, path: Path, start: int = len(MAGIC)) -> tuple[list[bytes], int]:
    """The payloads of a segment's bytes from ``start``, and the end of its good prefix.

    A bad record followed by good ones is skipped (counted, logged); a torn tail ends it.
    """
    read = read_segment(data, start)
    for off, n in read.skipped:
        FACTLOG_CORRUPT.inc()
        log.error("factlog.corrupt_record_skipped", segment=path.name, offset=off, skipped_bytes=n)
    return read.payloads, read.good_end


def scan(directory: Path | str, *, repair: bool) -> Iterator[tuple[int, bytes]]:
    """Yield ``(segment, payload)`` of every good record, oldest first.

    ``repair`` truncates a torn tail (and an empty or foreign segment's bad header) so the file
    ends at its last good record; without it (a read-only report) nothing is changed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    for seq in segments(directory):
        path = segment_path(directory, seq)
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            log.error("factlog.bad_segment_header", segment=path.name, size=len(data))
            if data:
                FACTLOG_CORRUPT.inc()
            continue
        payloads, good = parse(data, path)
        if good < len(data) and repair:
            log.warning("factlog.torn_tail_cut", segment=path.name, cut_bytes=len(data) - good)
            with open(path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        for p in payloads:
            yield seq, p


def frame(payloads: Sequence[bytes]) -> list[bytes]:
    """``payloads`` framed as records: header, payload, header, payload, ..."""
    parts: list[bytes] = []
    pack, crc = HEADER.pack, zlib.crc32
    for p in payloads:
        parts.append(pack(len(p), crc(p)))
        parts.append(p)
    return parts
