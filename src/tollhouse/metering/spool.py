"""The local durable spool: SQLite in WAL mode, one writer thread, group commit.

Every operation (reserve, access-log state updates, reads for the forwarder) is queued to a
dedicated writer thread that owns the only connection. The thread takes what is queued, waits up to
``group_commit_ms`` for more, runs the whole batch in ONE transaction and commits once, then
resolves the callers' futures on their event loop. So thousands of concurrent ``reserve()`` calls
cost a handful of fsyncs, and the event loop never touches the disk.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``. In WAL mode FULL fsyncs the WAL at
every commit, so a committed reservation survives a power loss, not only a process crash. NORMAL
would only fsync at checkpoints: a power cut could lose reservations that were answered OK, which
is exactly what must never happen (we admitted a request we can no longer bill). Group commit pays
for the fsync: one per batch, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollhouse.logs import get_logger
from tollhouse.metering.metrics import SPOOL_COMMITS, SPOOL_WRITE_ERRORS, USAGE_RESERVED
from tollhouse.metering.policy import Finalizer, LogEntry
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.spool_sql import HANDLERS, SPOOL_DDL, ApplyResult

__all__ = ["SPOOL_FILE", "ApplyResult", "Spool", "SpoolError", "SpoolStats", "new_usage_id"]

log = get_logger(__name__)

SPOOL_FILE = "spool.db"
_MAX_BATCH = 10_000



def new_usage_id(now_s: float | None = None) -> str:
    """Return a fresh usage id: 32 hex digits, time-ordered prefix (uuid7-like), random tail."""
    ms = int((time.time() if now_s is None else now_s) * 1000) & 0xFFFF_FFFF_FFFF
    return f"{ms:012x}{uuid.uuid4().hex[12:]}"


class SpoolError(Exception):
    """The spool cannot take the write (disk full, I/O error, closed): do not admit."""


@dataclass(slots=True)
class SpoolStats:
    """Plain counters of the writer (read by tests and ``/metrics``)."""

    commits: int = 0
    failed_commits: int = 0
    reserves: int = 0
    entries: int = 0


@dataclass(slots=True)
class _Op:
    kind: str
    args: tuple[Any, ...]
    fut: asyncio.Future[Any] | None
    loop: asyncio.AbstractEventLoop | None
    result: Any = None
    error: BaseException | None = None
    durable: bool = field(default=False)


_STOP = _Op("stop", (), None, None)


def _resolve(ops: list[_Op]) -> None:
    for op in ops:
        fut = op.fut
        if fut is None or fut.done():
            continue
        if op.error is not None:
            fut.set_exception(op.error)
        else:
            fut.set_result(op.result)


class Spool:
    """A durable local spool of usage records in ``directory/spool.db``. Call :meth:`open` first."""

    def __init__(
        self,
        directory: Path | str,
        *,
        group_commit_ms: float = 0.0,
        max_pages: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(directory) / SPOOL_FILE
        self._window_s = max(group_commit_ms, 0.0) / 1000.0
        self._max_pages = max_pages  # caps the file size; tests use it to simulate a full disk
        self._clock = clock
        self._q: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = True
        self._thread: threading.Thread | None = None
        self.stats = SpoolStats()

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create/open the spool file and start the writer thread. Raises :class:`SpoolError`."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready), name="tollhouse-spool", daemon=True
        )
        self._thread.start()
        await ready

    async def close(self) -> None:
        """Finish what is queued, commit, close the file. Later calls raise :class:`SpoolError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._q.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    @property
    def closed(self) -> bool:
        """True before :meth:`open` and after :meth:`close`."""
        return self._closed

    # ---- the async API ---------------------------------------------------------------------

    async def reserve(self, record: UsageRecord) -> None:
        """Write a RESERVED record; durable (committed, fsynced) when this returns."""
        if not record.usage_id:
            raise SpoolError("a usage record needs a usage_id")
        blob = record.SerializeToString()
        try:
            await self._submit(
                "reserve", (record.usage_id, record.admitted_at_ms, blob, record.request_id),
                durable=True,
            )
        except asyncio.CancelledError:
            # The caller gave up (Check deadline): it will not answer OK, so the record, if it
            # gets committed at all, must never be billed. Void it in the writer's next batch.
            self._void_quietly(record.usage_id)
            raise
        USAGE_RESERVED.inc()

    def _void_quietly(self, usage_id: str) -> None:
        try:
            fut = self._enqueue("void", (usage_id, int(self._clock() * 1000)))
        except SpoolError:
            return
        fut.add_done_callback(_consume)

    def submit_entries(
        self, entries: Sequence[LogEntry], now_ms: int, finalizer: Finalizer
    ) -> asyncio.Future[ApplyResult]:
        """Queue access-log entries; the writer finalises their records in its next batch."""
        return self._enqueue("entries", (entries, now_ms, finalizer))

    async def expire(
        self, before_ms: int, now_ms: int, finalizer: Finalizer, limit: int = 5000
    ) -> list[UsageRecord]:
        """Finalise RESERVED records admitted at or before ``before_ms`` as UNCONFIRMED."""
        result: list[UsageRecord] = await self._submit(
            "expire", (before_ms, now_ms, finalizer, limit)
        )
        return result

    async def unsent(self, limit: int) -> list[UsageRecord]:
        """Up to ``limit`` final records not yet acknowledged by the meter, oldest first."""
        result: list[UsageRecord] = await self._submit("unsent", (limit,))
        return result

    async def mark_sent(self, usage_ids: Sequence[str], now_ms: int) -> None:
        """Record that the meter acknowledged these records (they stay until :meth:`prune`)."""
        await self._submit("mark_sent", (list(usage_ids), now_ms))

    async def prune(self, sent_before_ms: int) -> int:
        """Delete records the meter acknowledged before ``sent_before_ms``; return how many."""
        result: int = await self._submit("prune", (sent_before_ms,))
        return result

    async def counts(self) -> dict[str, int]:
        """``{"RESERVED": n, "CONFIRMED": n, ..., "unsent": n}`` over the whole spool."""
        result: dict[str, int] = await self._submit("counts", ())
        return result

    async def get(self, usage_id: str) -> UsageRecord | None:
        """One record by id, or None."""
        result: UsageRecord | None = await self._submit("get", (usage_id,))
        return result

    def _enqueue(
        self, kind: str, args: tuple[Any, ...], durable: bool = False
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._closed:
                raise SpoolError("the spool is closed")
            self._q.put(_Op(kind, args, fut, loop, durable=durable))
        return fut

    async def _submit(self, kind: str, args: tuple[Any, ...], durable: bool = False) -> Any:
        return await self._enqueue(kind, args, durable)

    # ---- the writer thread -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SPOOL_DDL)
        if self._max_pages is not None:
            conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
        return conn

    def _run(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except (sqlite3.Error, OSError) as e:
            with self._lock:
                self._closed = True
            err = SpoolError(f"cannot open the spool at {self.path}: {e}")
            loop.call_soon_threadsafe(_set_exc, ready, err)
            return
        loop.call_soon_threadsafe(_set_result, ready)
        try:
            stop = False
            while not stop:
                batch = [self._q.get()]
                if batch[0] is _STOP:
                    break
                stop = self._collect(batch)
                self._execute(conn, batch)
        finally:
            self._fail_queued()
            conn.close()

    def _collect(self, batch: list[_Op]) -> bool:
        """Add what is queued (and, for durable writes, what arrives within the window)."""
        deadline = time.monotonic() + self._window_s
        while len(batch) < _MAX_BATCH:
            try:
                op = self._q.get_nowait()
            except queue.Empty:
                wait = deadline - time.monotonic()
                if wait <= 0 or not any(o.durable for o in batch):
                    return False
                try:
                    op = self._q.get(timeout=wait)
                except queue.Empty:
                    return False
            if op is _STOP:
                return True
            batch.append(op)
        return False

    def _fail_queued(self) -> None:
        leftover: list[_Op] = []
        while True:
            try:
                op = self._q.get_nowait()
            except queue.Empty:
                break
            if op is not _STOP:
                op.error = SpoolError("the spool is closed")
                leftover.append(op)
        _dispatch(leftover)

    def _handle(self, conn: sqlite3.Connection, op: _Op) -> None:
        op.result = HANDLERS[op.kind](conn, op.args)
        if op.kind == "reserve":
            if op.result:
                self.stats.reserves += 1
            else:
                op.error = SpoolError(f"duplicate usage_id {op.args[0]}")
            op.result = None
        elif op.kind == "entries":
            self.stats.entries += len(op.args[0])

    def _execute(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                self._handle(conn, op)
            conn.execute("COMMIT")
            self.stats.commits += 1
            SPOOL_COMMITS.inc()
        except Exception as e:  # sqlite3.Error (full, I/O) or a bug: fail the batch, never hang
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self.stats.failed_commits += 1
            SPOOL_WRITE_ERRORS.inc()
            log.error("spool.write_failed", error=type(e).__name__, detail=str(e), ops=len(batch))
            err = SpoolError(f"spool write failed: {e}")
            for op in batch:
                op.error = err
                op.result = None
        _dispatch(batch)

def _dispatch(ops: list[_Op]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
    for op in ops:
        if op.loop is not None:
            by_loop.setdefault(op.loop, []).append(op)
    for loop, group in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, group)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("spool.void_failed", error=type(fut.exception()).__name__)


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _set_exc(fut: asyncio.Future[None], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)
