"""The metering worker's side: read another process's fact log and join what it holds.

:class:`LogTail` reads the segments written by the Check process's
:class:`~tollhouse.metering.writer.FactWriter`, in order, never past the durable watermark the
writer publishes (:mod:`tollhouse.metering.watermark`): the worker sees a fact only once it
would survive a power loss, exactly as the in-process join did. Segments below the writer's
active one are sealed (never written again) and are read to their end; a torn tail left by a
crash is skipped there, as recovery does.

:class:`TailSpool` feeds those facts to the same :class:`~tollhouse.metering.join.Join` the
in-process spool uses (or to the outbox for the shared Redis join), expanding each raw
access-log message into served facts first, and deletes a sealed segment once every fact in it
is done. It never writes the log: a grace-period decision is not logged, it is forwarded; if the
worker dies before the meter acknowledged it, the replay reaches the same decision again and the
meter keeps one record per usage id.
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from tollhouse.logs import get_logger
from tollhouse.metering.factlog import SpoolError
from tollhouse.metering.factlog_format import (
    HEADER,
    MAGIC,
    MAX_RECORD,
    parse,
    segment_path,
    segments,
)
from tollhouse.metering.facts import Fact, decode_fact
from tollhouse.metering.join import Applied
from tollhouse.metering.metrics import FACTLOG_CORRUPT
from tollhouse.metering.policy import Finalizer
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.spool import Expand, Joining
from tollhouse.metering.watermark import WatermarkReader

__all__ = ["LogTail", "TailSpool"]

log = get_logger(__name__)

_CHUNK = 4 << 20


def _records(data: bytes, path: Path) -> tuple[list[bytes], int]:
    """Whole records from the start of ``data`` (a record boundary), and the bytes they span.

    Stops before a record that is not complete yet; only a complete record with a bad checksum
    (corruption, never a write in progress) makes it look for the next good one.
    """
    out: list[bytes] = []
    off, end = 0, len(data)
    while off + HEADER.size <= end:
        length, crc = HEADER.unpack_from(data, off)
        stop = off + HEADER.size + length
        if not 0 < length <= MAX_RECORD:
            break
        if stop > end:
            return out, off
        payload = data[off + HEADER.size : stop]
        if zlib.crc32(payload) != crc:
            break
        out.append(payload)
        off = stop
    if off + HEADER.size > end:
        return out, off
    more, good = parse(data, path, off)  # corruption: skip to the next good record (counted)
    return out + more, good


class LogTail:
    """Reads the log in ``directory`` up to its watermark. Blocking: call it from a thread."""

    def __init__(self, directory: Path, *, writer_pid: int = 0) -> None:
        self.directory = directory
        self._watermark = WatermarkReader(directory)
        self._writer_pid = writer_pid
        self._seq = 0
        self._off = len(MAGIC)
        self.active = 0
        self.visited: list[int] = []  # segments reached by the last read, records or not

    def read(self) -> list[tuple[int, bytes]]:
        """The records durable since the last call, as ``(segment, payload)``, oldest first."""
        mark = self._watermark.read()
        if mark is None or (self._writer_pid and mark[2] != self._writer_pid):
            return []  # no writer yet, or another writer: this worker's writer is gone
        active, size, _ = mark
        if self._seq == 0:
            existing = segments(self.directory)
            self._seq = existing[0] if existing else active
        out: list[tuple[int, bytes]] = []
        self.visited = [self._seq]
        while self._seq < active:
            if self._read_segment(self._seq, None, out):
                self._next_segment(active)
        if self._seq == active:
            self._read_segment(active, size, out)
        self.active = active
        return out

    def _next_segment(self, active: int) -> None:
        later = [s for s in segments(self.directory) if self._seq < s <= active]
        self._seq = later[0] if later else active
        self._off = len(MAGIC)
        self.visited.append(self._seq)

    def _read_segment(self, seq: int, limit: int | None, out: list[tuple[int, bytes]]) -> bool:
        """Append the segment's records from the current offset; True once it is read whole."""
        path = segment_path(self.directory, seq)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True  # deleted (done) or never created: nothing to read
        try:
            end = os.fstat(fd).st_size if limit is None else limit
            while self._off < end:
                data = os.pread(fd, min(end - self._off, _CHUNK), self._off)
                payloads, used = _records(data, path)
                if used == 0 and len(data) < end - self._off:  # one record above the chunk
                    data = os.pread(fd, min(end - self._off, HEADER.size + MAX_RECORD), self._off)
                    payloads, used = _records(data, path)
                out.extend((seq, p) for p in payloads)
                self._off += used
                if used == 0:
                    break
        finally:
            os.close(fd)
        if limit is None and self._off < end:  # a torn tail after a crash: cut off, as on replay
            log.warning("factlog.torn_tail_skipped", segment=path.name, bytes=end - self._off)
        return limit is None

    def close(self) -> None:
        """Release the watermark map."""
        self._watermark.close()


class TailSpool(Joining):
    """The worker's spool: facts read from the Check process's log, joined here."""

    def __init__(
        self,
        directory: Path | str,
        *,
        finalizer: Callable[[], Finalizer],
        on_applied: Callable[[Applied], None],
        expand: Expand,
        clock: Callable[[], float] = time.time,
        instance: str = "",
        remote: bool = False,
        writer_pid: int = 0,
    ) -> None:
        super().__init__(
            finalizer=finalizer,
            on_applied=on_applied,
            clock=clock,
            instance=instance,
            remote=remote,
            expand=expand,
        )
        self.directory = self.path = Path(directory)
        self._tail = LogTail(self.directory, writer_pid=writer_pid)
        self._lock = asyncio.Lock()
        self._closed = True

    async def open(self) -> None:
        """Read (and join) everything the log holds up to its watermark."""
        self._closed = False
        await self.barrier()
        if self.join.pending_count or self.join.unsent_count:
            log.info(
                "spool.replayed", pending=self.join.pending_count, unsent=self.join.unsent_count
            )

    async def close(self) -> None:
        """Stop reading."""
        self._closed = True
        self._tail.close()

    @property
    def closed(self) -> bool:
        """True before :meth:`open` and after :meth:`close`."""
        return self._closed

    async def barrier(self) -> None:
        """Read and apply every fact durable now."""
        if self._closed:
            raise SpoolError("the spool is closed")
        async with self._lock:
            records = await asyncio.to_thread(self._tail.read)
            for seq in self._tail.visited:
                self.join.register_segment(seq)
            self._apply(records)

    def _apply(self, records: list[tuple[int, bytes]]) -> None:
        fin = self._finalizer()
        now_ms = int(self._clock() * 1000)
        group: list[Fact] = []
        seq = 0
        for rseq, payload in records:
            if rseq != seq:
                self._flush(group, seq, fin, now_ms)
                group, seq = [], rseq
            try:
                group.append(decode_fact(payload))
            except ValueError:
                FACTLOG_CORRUPT.inc()
                log.error("spool.undecodable_fact", segment=rseq)
        self._flush(group, seq, fin, now_ms)
        if self._tail.active:
            self.join.seal(self._tail.active)

    def _flush(self, group: list[Fact], seq: int, fin: Finalizer, now_ms: int) -> None:
        if group:
            self._take(group, seq, fin, now_ms)

    async def expire(
        self, cutoff_ms: int, now_ms: int, fin: Finalizer, limit: int = 5000
    ) -> tuple[list[UsageRecord], int]:
        """Finalise reservations admitted at or before ``cutoff_ms`` as UNCONFIRMED.

        Not logged: a replay decides the same. Also drops orphan served facts older than it.
        """
        return self.join.expire(cutoff_ms, now_ms, fin, limit)

    def _free_segment(self, seq: int) -> None:
        if seq >= self._tail.active:
            return
        try:
            segment_path(self.directory, seq).unlink(missing_ok=True)
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            log.error("factlog.delete_failed", segment=seq, error=str(e))
