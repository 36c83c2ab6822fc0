"""The durable fact log: append-only segments of checksummed records, one writer thread.

Layout: ``directory/facts-<seq>.log`` files (segments). A segment starts with an 8-byte magic,
then records ``u32 length | u32 crc32(payload) | payload`` (little endian). Only the newest
segment (the active one) is ever written; older ones are sealed and read only at recovery. A
segment is deleted once every fact in it has been acknowledged downstream (the owner calls
:meth:`FactLog.delete`); the log itself never decides that a fact is done.

Group commit: callers queue batches of payloads (:meth:`FactLog.append`); the writer thread takes
everything queued, frames it, writes the joined bytes with one ``os.pwrite``, calls
``os.fdatasync`` once, then schedules ONE ``loop.call_soon_threadsafe`` for the whole batch, which
resolves every waiter and hands the batch to the owner's ``on_durable`` callback. While one
fdatasync is in flight (1-5 ms on this disk), the next batch forms in the queue.

Durability: an append is acknowledged (its future resolved, ``on_durable`` called) only after
``fdatasync`` returned for the bytes that hold it, so it survives a power loss, not only a crash:
``fdatasync`` flushes the data and the metadata needed to read it back (the file size). A new
segment is ``fdatasync``-ed with its magic and its directory is ``fsync``-ed before any record goes
into it, so the file itself survives too; a deletion is likewise followed by a directory fsync.
Opening a log creates and syncs its first segment, which pays the slow first syncs of a fresh
file before the process reports ready, not on the first Check.

Recovery (:func:`scan`): every record is checked against its length and CRC. A torn tail (a
record cut short, or garbage after the last good record, as a crash mid-write leaves) is cut off
by truncating the segment. A bad record followed by good ones (media corruption, not a crash) is
skipped up to the next record that checks out, counted in ``tollhouse_factlog_corrupt_total`` and
logged with its offset; the good records after it are kept. A write that fails (disk full, I/O
error) truncates the segment back to its last good size and fails the whole batch: its callers
see :class:`SpoolError` (the Check answers 503), and nothing after it depends on it.

Health (:attr:`FactLog.health`, :mod:`tollhouse.metering.loghealth`): a failed write, a segment
deleted under the writer, or one :meth:`FactLog.open` could not create makes the log unhealthy;
appends fail at once until the writer, retrying, has opened a fresh segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollhouse.logs import get_logger
from tollhouse.metering.factlog_format import MAGIC, frame, scan, segment_path, segments
from tollhouse.metering.loghealth import HealthTracker, LogHealth, ensure_linked
from tollhouse.metering.metrics import (
    FACTS_LOST,
    SPOOL_COMMITS,
    SPOOL_WRITE_ERRORS,
)
from tollhouse.metering.watermark import WATERMARK_FILE, Watermark

__all__ = ["MAGIC", "FactLog", "LogHealth", "SpoolError", "Written", "scan", "segment_path"]

log = get_logger(__name__)

_MAX_BATCH_ITEMS = 4096
DEFAULT_SEGMENT_BYTES = 64 << 20


class SpoolError(Exception):
    """The spool (its fact log) cannot take the write (disk full, I/O error, closed): refuse."""


@dataclass(slots=True)
class Written:
    """A batch as handed to ``on_durable``: the items' metadata and the segment holding them."""

    metas: list[Any]
    segment: int
    active: int


@dataclass(slots=True)
class _Item:
    payloads: Sequence[bytes]
    metas: Sequence[Any]
    fut: asyncio.Future[None] | None
    kind: str = "append"
    arg: int = 0
    error: BaseException | None = field(default=None)


_STOP = _Item((), (), None, kind="stop")


class FactLog:
    """An append-only fact log in ``directory``. :meth:`open` it on the loop that will use it."""

    def __init__(
        self,
        directory: Path | str,
        *,
        on_durable: Callable[[Written], None],
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        group_commit_ms: float = 0.0,
        watermark: bool = False,
        retry_s: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self._publish_watermark = watermark
        self._watermark: Watermark | None = None
        self._on_durable = on_durable
        self._segment_bytes = segment_bytes
        self._window_s = max(group_commit_ms, 0.0) / 1000.0
        self._q: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = True
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._size = 0
        self.active = 0
        self.commits = 0
        self._health = HealthTracker(self.directory, retry_s)

    @property
    def health(self) -> LogHealth:
        """Whether the log can write now (set by the writer thread; read from anywhere)."""
        return self._health.state

    # ---- lifecycle (loop thread) ------------------------------------------------------------

    def open(self) -> None:
        """Create the directory and a fresh, synced active segment (blocking: call in a thread).

        If that fails the log opens unhealthy (logged): the writer keeps retrying.
        """
        try:
            self._open_segment()
            os.fdatasync(self._fd)  # warm: the first syncs of a fresh file are the slow ones
        except OSError as e:
            self._health.failed("open", e)

    def _open_segment(self) -> None:
        """A fresh segment after every existing one (at open, and to recover from a failure)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = segments(self.directory)
        last = max(existing[-1] if existing else 0, self.active)
        if self._publish_watermark:  # never reuse a number a worker may still be reading
            if self._watermark is None or not (self.directory / WATERMARK_FILE).exists():
                if self._watermark is not None:  # the directory was removed: a new file
                    self._watermark.close()
                self._watermark = Watermark(self.directory)
            last = max(last, self._watermark.last_segment)
        self._new_segment(last + 1)

    def start(self) -> None:
        """Start the writer thread on the running loop (after :meth:`open`)."""
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tollhouse-factlog", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Write what is queued, close the segment. Later appends raise :class:`SpoolError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._q.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    @property
    def closed(self) -> bool:
        """True before :meth:`start` and after :meth:`close`."""
        return self._closed

    # ---- appending (loop thread) ------------------------------------------------------------

    def append(
        self, payloads: Sequence[bytes], metas: Sequence[Any], *, wait: bool = True
    ) -> asyncio.Future[None] | None:
        """Queue payloads; ``metas`` go to ``on_durable`` once they are synced.

        Returns a future resolved at that moment (or failed with :class:`SpoolError`), or None
        when ``wait`` is false (a failure is then logged and counted by the writer).
        """
        assert self._loop is not None
        fut = self._loop.create_future() if wait else None
        self._put(_Item(payloads, metas, fut))
        return fut

    def barrier(self) -> asyncio.Future[None]:
        """A future resolved once everything queued before it has been written and applied."""
        fut = self.append((), ())
        assert fut is not None
        return fut

    def delete(self, seq: int) -> None:
        """Delete a sealed segment whose facts are all acknowledged (never the active one)."""
        if seq < self.active:
            self._put(_Item((), (), None, kind="delete", arg=seq))

    def _put(self, item: _Item) -> None:
        with self._lock:
            if self._closed:
                raise SpoolError("the fact log is closed")
            self._q.put(item)

    # ---- the writer thread ------------------------------------------------------------------

    def _new_segment(self, seq: int) -> None:
        path = segment_path(self.directory, seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, MAGIC)
            os.fdatasync(fd)
            self._fsync_dir()
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size, self.active = fd, len(MAGIC), seq
        if self._watermark is not None:
            self._watermark.publish(seq, self._size)  # the previous segment is sealed

    def _fsync_dir(self) -> None:
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _try_recover(self) -> bool:
        """Writer thread: open a fresh segment (at most every ``retry_s``); True once healthy."""
        if self._health.state.ok:
            return True
        if not self._health.retry_due():
            return False
        try:
            self._open_segment()
        except OSError as e:
            self._health.failed("reopen", e)
            return False
        self._health.recovered(self.active)
        return True

    def _next_item(self) -> _Item | None:
        """Writer thread: the next queued item, or None after ``retry_s`` idle."""
        try:
            return self._q.get(timeout=self._health.retry_s)
        except queue.Empty:
            return None

    def _checkup(self) -> None:
        """Writer thread, every ``retry_s``: retry if unhealthy, else see the segment exists."""
        if not self._health.state.ok:
            self._try_recover()
        elif self._fd >= 0 and self._health.checkup_due():
            try:
                ensure_linked(self._fd, segment_path(self.directory, self.active))
            except OSError as e:
                self._health.failed("check", e, retry_now=True)

    def _run(self) -> None:
        try:
            while True:
                first = self._next_item()
                self._checkup()
                if first is None:
                    continue
                batch = [first]
                stop = batch[0] is _STOP
                if not stop:
                    stop = self._collect(batch)
                    self._write(batch)
                if stop:
                    break
        finally:
            self._fail_queued()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._watermark is not None:
                self._watermark.close()

    def _collect(self, batch: list[_Item]) -> bool:
        """Add what is queued (and what arrives within the group-commit window); True on stop."""
        deadline = time.monotonic() + self._window_s
        while len(batch) < _MAX_BATCH_ITEMS:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return False
                try:
                    item = self._q.get(timeout=wait)
                except queue.Empty:
                    return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _write(self, batch: list[_Item]) -> None:
        appends = [it for it in batch if it.kind == "append"]
        for it in batch:
            if it.kind == "delete":
                self._delete(it.arg)
        parts = [part for it in appends for part in frame(it.payloads)]
        err: BaseException | None = None
        if parts and not self._try_recover():
            err = SpoolError(f"the spool cannot write: {self._health.state.error}")
        seq = self.active
        if parts and err is None:
            err = self._sync_bytes(b"".join(parts))
        if err is None and self._size >= self._segment_bytes:
            try:
                self._new_segment(seq + 1)
            except OSError as e:  # keep writing the current one; retried after the next batch
                log.error("factlog.rotate_failed", error=str(e))
        if err is None:
            self._dispatch(appends, seq, None)
            return
        # A barrier (no payloads) waits for nothing that failed: it completes, so the forwarder
        # keeps sending what is already durable while the log cannot write.
        self._dispatch([it for it in appends if it.payloads], seq, err)
        self._dispatch([it for it in appends if not it.payloads], seq, None)

    def _sync_bytes(self, data: bytes) -> BaseException | None:
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(self._fd, data[done:], self._size + done)
            os.fdatasync(self._fd)
            ensure_linked(self._fd, segment_path(self.directory, self.active))
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # no torn record stays behind a failure
            SPOOL_WRITE_ERRORS.inc()
            log.error(
                "factlog.write_failed", error=type(e).__name__, detail=str(e), bytes=len(data)
            )
            self._health.failed("write", e, retry_now=True)  # a fresh segment, tried at once
            return SpoolError(f"fact log write failed: {e}")
        self._size += len(data)
        if self._watermark is not None:
            self._watermark.publish(self.active, self._size)
        self.commits += 1
        SPOOL_COMMITS.inc()
        return None

    def _delete(self, seq: int) -> None:
        if seq >= self.active:
            return
        try:
            segment_path(self.directory, seq).unlink(missing_ok=True)
            self._fsync_dir()
        except OSError as e:
            log.error("factlog.delete_failed", segment=seq, error=str(e))

    def _dispatch(self, items: list[_Item], seq: int, err: BaseException | None) -> None:
        if not items or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._done, items, seq, self.active, err)

    def _done(self, items: list[_Item], seq: int, active: int, err: BaseException | None) -> None:
        """On the loop: apply the batch (if it was written), then wake every waiter."""
        if err is None:
            metas = [m for it in items for m in it.metas]
            try:
                self._on_durable(Written(metas, seq, active))
            except Exception:
                log.error("factlog.apply_failed", exc=True, facts=len(metas))
        for it in items:
            fut = it.fut
            if fut is None:
                if err is not None and it.payloads:
                    FACTS_LOST.inc(len(it.payloads))
                    log.error("factlog.unwaited_facts_lost", facts=len(it.payloads))
                continue
            if fut.done():
                continue
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(None)

    def _fail_queued(self) -> None:
        leftover: list[_Item] = []
        while True:
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                break
            if it is not _STOP and it.kind == "append":
                leftover.append(it)
        self._dispatch(leftover, self.active, SpoolError("the fact log is closed"))
