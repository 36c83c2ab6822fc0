"""How far the fact log is durable, shared between the writer and the metering worker.

The writer thread of :class:`~tollhouse.metering.factlog.FactLog` publishes, after every
``fdatasync`` that returned, the active segment and the byte offset up to which it is durable.
The metering worker (another process) reads facts only up to that point, so it never joins a
fact that a failed write is about to cut off again: it sees exactly what the in-process join
would have seen.

The file ``directory/watermark`` holds 32 bytes in a shared memory map: ``u64 generation |
u64 segment | u64 size | u64 pid``. It is a seqlock with one writer: the generation is odd
while the writer changes the fields, and a reader retries until it reads the same even
generation before and after them. Nothing is synced to disk: after a crash the worker waits
for the next writer, which publishes its own (new) segment before it accepts any fact.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from pathlib import Path

__all__ = ["WATERMARK_FILE", "Watermark", "WatermarkReader"]

WATERMARK_FILE = "watermark"
_LAYOUT = struct.Struct("<QQQQ")
_GEN = struct.Struct("<Q")
_SIZE = _LAYOUT.size


class Watermark:
    """The writer's side: :meth:`publish` after each durable write (one writer thread)."""

    def __init__(self, directory: Path) -> None:
        fd = os.open(directory / WATERMARK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        gen, self.last_segment, _, _ = _LAYOUT.unpack_from(self._map, 0)
        self._gen = gen + (gen & 1)  # a crashed writer may have left it odd
        self._pid = os.getpid()

    def publish(self, segment: int, size: int) -> None:
        """Facts of ``segment`` up to byte ``size`` are durable."""
        self._gen += 1
        _GEN.pack_into(self._map, 0, self._gen)  # odd: being changed
        _LAYOUT.pack_into(self._map, 0, self._gen, segment, size, self._pid)
        self._gen += 1
        _GEN.pack_into(self._map, 0, self._gen)

    def close(self) -> None:
        """Unmap (the file stays: a reader keeps its last value)."""
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()


class WatermarkReader:
    """The worker's side: the last published ``(segment, size, writer pid)``, or None."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / WATERMARK_FILE
        self._map: mmap.mmap | None = None
        self._ino: int | None = None

    def read(self) -> tuple[int, int, int] | None:
        """A consistent snapshot; None while no writer has published yet.

        A file replaced under it (the writer recreated a removed spool directory) is mapped
        again.
        """
        try:
            ino = os.stat(self._path).st_ino
        except FileNotFoundError:
            ino = None
        if ino != self._ino:
            self.close()
        m = self._map or self._open()
        if m is None:
            return None
        for _ in range(1000):
            g1, seg, size, pid = _LAYOUT.unpack_from(m, 0)
            g2 = _GEN.unpack_from(m, 0)[0]
            if g1 == g2 and not g1 & 1:
                return (seg, size, pid) if g1 else None
        return None  # the writer is mid-publish a thousand times in a row: try again later

    def _open(self) -> mmap.mmap | None:
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size < _SIZE:
                return None
            self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
            self._ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        return self._map

    def close(self) -> None:
        """Unmap."""
        if self._map is not None:
            self._map.close()
            self._map = None
        self._ino = None
