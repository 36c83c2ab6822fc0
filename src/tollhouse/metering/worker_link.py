"""The link between ``tollhouse serve`` and its metering worker process.

``serve`` starts the worker (``python -m tollhouse.worker``) in its own session, so a terminal's
Ctrl-C reaches only ``serve``, which drains first and then stops the worker. The two talk over a
socket pair, in frames of ``u32 length | u8 kind | payload``:

- worker to serve: ``R`` a final ``UsageRecord`` that changes a quota (post-hoc units of a
  CONFIRMED record, or a VOIDED reservation whose unit goes back), ``O`` how many served facts
  were dropped without a reservation (decimal), ``M`` the worker's metrics
  (the reply to ``m``), ``S`` its status as JSON (``ready`` once it has replayed the log, then
  its queue sizes every second);
- serve to worker: ``m`` a metrics request, ``c`` the config was reloaded (read it again).

A worker that exits while ``serve`` runs is logged, counted
(``tollhouse_metering_worker_restarts_total``) and started again with an exponential back-off;
reservations keep being written meanwhile and are finalised when it is back. The worker stops
when ``serve`` closes the socket, whether by a clean stop or by dying.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter, Gauge

from tollhouse.logs import get_logger

__all__ = [
    "FRAME",
    "WORKER_UP",
    "WorkerProcess",
    "merge_exposition",
    "read_frame",
    "write_frame",
]

log = get_logger(__name__)

FRAME = struct.Struct(">IB")
_MAX_FRAME = 64 << 20
_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 30.0
_STABLE_S = 30.0  # a worker that ran this long restarts at the shortest back-off again

WORKER_UP = Gauge("tollhouse_metering_worker_up", "1 while the metering worker process runs.")
WORKER_RESTARTS = Counter(
    "tollhouse_metering_worker_restarts_total",
    "Times the metering worker process exited unexpectedly and was started again.",
)


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """The next ``(kind, payload)``; None at the end of the stream."""
    try:
        head = await reader.readexactly(FRAME.size)
        length, kind = FRAME.unpack(head)
        if length > _MAX_FRAME:
            raise ValueError(f"frame of {length} bytes")
        payload = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return bytes((kind,)), payload


def write_frame(writer: asyncio.StreamWriter, kind: bytes, payload: bytes = b"") -> None:
    """Queue one frame (the transport buffers; never blocks the loop)."""
    writer.write(FRAME.pack(len(payload), kind[0]) + payload)


def _blocks(text: str) -> list[tuple[str, str]]:
    """Exposition text split into ``(family name, block)`` at each ``# HELP`` line."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("# HELP ") or not out:
            out.append((line.split(" ", 3)[2] if line.startswith("# HELP ") else "", []))
        out[-1][1].append(line)
    return [(name, "".join(lines)) for name, lines in out]


def merge_exposition(own: bytes, worker: bytes | None, worker_families: frozenset[str]) -> bytes:
    """``own`` without the families the worker owns, plus the worker's samples of those."""

    def owned(name: str) -> bool:
        return name.removesuffix("_total").removesuffix("_created") in worker_families

    keep = [b for name, b in _blocks(own.decode()) if not owned(name)]
    if worker is not None:
        keep += [b for name, b in _blocks(worker.decode()) if owned(name)]
    return "".join(keep).encode()


def _log_level() -> str:
    return logging.getLevelName(logging.getLogger("tollhouse").getEffectiveLevel()).lower()


class WorkerProcess:
    """Starts the metering worker, restarts it when it dies, and carries its frames."""

    def __init__(
        self,
        config_path: Path,
        *,
        instance: str,
        on_record: Callable[[bytes], None],
        on_orphans: Callable[[int], None] | None = None,
    ) -> None:
        self._config_path = config_path
        self._instance = instance
        self._on_record = on_record
        self._on_orphans = on_orphans
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._metrics: asyncio.Future[bytes] | None = None
        self.status: dict[str, object] = {"running": False, "ready": False}
        self._started_ms = int(time.time() * 1000)  # records admitted by this serve on
        self.restarts = 0

    async def start(self) -> None:
        """Start the worker and supervise it from now on."""
        self._task = asyncio.create_task(self._supervise(), name="tollhouse-metering-worker")

    async def stop(self, budget_s: float) -> int | None:
        """Ask the worker to drain and exit within ``budget_s``; its exit code (None: killed)."""
        self._stopping.set()
        proc = self._proc
        code: int | None = None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(proc.wait(), budget_s + 1.0)
            except TimeoutError:
                log.error("metering.worker_kill", reason="did not drain in time", budget_s=budget_s)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        elif proc is not None:
            code = proc.returncode
        if self._task is not None:
            await self._task
        return code

    def reload(self) -> None:
        """Tell the worker the config file changed (it reads and checks it itself)."""
        if self._writer is not None:
            write_frame(self._writer, b"c")

    async def metrics(self, timeout_s: float = 1.0) -> bytes | None:
        """The worker's exposition text, or None when it does not answer in time."""
        if self._writer is None:
            return None
        if self._metrics is None or self._metrics.done():
            self._metrics = asyncio.get_running_loop().create_future()
            write_frame(self._writer, b"m")
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            return await asyncio.wait_for(asyncio.shield(self._metrics), timeout_s)
        return None

    async def _supervise(self) -> None:
        backoff = _BACKOFF_MIN_S
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                code = await self._run_once()
            except Exception as e:  # cannot start at all (no python?): keep trying, loudly
                log.error("metering.worker_start_failed", error=type(e).__name__, detail=str(e))
                code = -1
            if self._stopping.is_set():
                break
            self.restarts += 1
            WORKER_RESTARTS.inc()
            if time.monotonic() - started > _STABLE_S:
                backoff = _BACKOFF_MIN_S
            log.error("metering.worker_exited", exit_code=code, restart_in_s=backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _run_once(self) -> int:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tollhouse.worker",
                "--config",
                str(self._config_path),
                "--instance",
                self._instance,
                "--fd",
                str(theirs.fileno()),
                "--writer-pid",
                str(os.getpid()),
                "--log-level",
                _log_level(),
                "--effects-since-ms",
                str(self._started_ms),
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        finally:
            theirs.close()
        self._proc = proc
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self._writer = writer
        self.status = {"running": True, "ready": False, "pid": proc.pid}
        WORKER_UP.set(1)
        log.info("metering.worker_started", pid=proc.pid)
        frames = asyncio.create_task(self._read(reader))
        try:
            return await proc.wait()
        finally:
            WORKER_UP.set(0)
            self.status = {"running": False, "ready": False, "exit_code": proc.returncode}
            self._writer = None
            writer.close()
            frames.cancel()
            await asyncio.gather(frames, return_exceptions=True)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while (frame := await read_frame(reader)) is not None:
            kind, payload = frame
            try:
                self._dispatch(kind, payload)
            except Exception:
                log.error("metering.worker_frame_failed", exc=True, kind=kind.decode())

    def _dispatch(self, kind: bytes, payload: bytes) -> None:
        if kind == b"R":
            self._on_record(payload)
        elif kind == b"O":
            if self._on_orphans is not None:
                self._on_orphans(int(payload))
        elif kind == b"M":
            if self._metrics is not None and not self._metrics.done():
                self._metrics.set_result(payload)
        elif kind == b"S":
            self.status = {**self.status, **json.loads(payload)}
