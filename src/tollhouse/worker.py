"""The metering worker: the composition root of the process ``tollhouse serve`` starts for usage.

It reads the fact log the Check process writes (up to its durable watermark), decodes the raw
access-log messages in it, joins and finalises usage, forwards final records to the meter (or
to the shared Redis join), and deletes segments once their facts are done: all the work that
would otherwise compete with Checks for one GIL. Quota effects of final records go back to
``serve`` over the link (:mod:`tollhouse.metering.worker_link`), which applies them to its
limiter. One worker per spool: it holds ``<spool>/worker.lock`` while it runs.

SIGTERM, SIGINT or the end of the link (``serve`` stopped or died) make it drain: read what is
durable, finalise what can be, forward within the shutdown grace, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
from pathlib import Path

from prometheus_client import generate_latest

from tollhouse.config import Config, ConfigError, load_config
from tollhouse.envoy.als import entries_of
from tollhouse.gctune import tune_after_start
from tollhouse.logs import configure_logging, get_logger
from tollhouse.metering import LogEntry, Metering
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.service import DEFAULT_SPOOL_DIR
from tollhouse.metering.worker_link import read_frame, write_frame

__all__ = ["main", "run"]

log = get_logger("tollhouse.worker")

_LOCK_FILE = "worker.lock"
_STATUS_S = 1.0


class _Worker:
    """One run: the metering engine, the link to ``serve`` and the config it follows."""

    def __init__(
        self, config_path: Path, cfg: Config, writer: asyncio.StreamWriter, effects_since_ms: int
    ) -> None:
        self.effects_since_ms = effects_since_ms
        self.config_path = config_path
        self.cfg = cfg
        self.writer = writer
        self.stop = asyncio.Event()
        self.metering: Metering | None = None

    def expand(self, message: bytes) -> list[LogEntry]:
        from_header = self.cfg.metering.usage_id_from_request_header
        return entries_of(message, usage_id_from_header=from_header)

    def confirmed(self, rec: UsageRecord) -> None:
        """Send a CONFIRMED record back only if it carries units known after the fact."""
        meters = self.cfg.meters
        if rec.admitted_at_ms >= self.effects_since_ms and any(
            m in meters and meters[m].source != "requests" for m in rec.units
        ):
            write_frame(self.writer, b"R", rec.SerializeToString())

    def voided(self, rec: UsageRecord) -> None:
        """Send a VOIDED record back (its unit is refunded) unless an earlier serve admitted it."""
        if rec.admitted_at_ms >= self.effects_since_ms:
            write_frame(self.writer, b"R", rec.SerializeToString())

    def orphans(self, n: int) -> None:
        """Tell serve how many served facts were dropped without a reservation."""
        write_frame(self.writer, b"O", str(n).encode())

    async def reload(self) -> None:
        try:
            cfg = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as e:
            log.error("worker.reload_rejected", problems=e.problems[:20])
            return
        self.cfg = cfg
        if self.metering is not None:
            self.metering.reconfigure(cfg)

    async def serve_link(self, reader: asyncio.StreamReader) -> None:
        """Answer ``serve``'s requests; the end of the link means stop."""
        while (frame := await read_frame(reader)) is not None:
            kind, _ = frame
            if kind == b"m":
                write_frame(self.writer, b"M", generate_latest())
            elif kind == b"c":
                await self.reload()
        self.stop.set()

    async def report(self) -> None:
        while not self.stop.is_set():
            if self.metering is not None:
                spool = self.metering.spool
                status = {
                    "ready": True,
                    "pending": spool.join.pending_count,
                    "unsent": spool.join.unsent_count,
                    "outbox": len(spool.outbox),
                }
                write_frame(self.writer, b"S", json.dumps(status).encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), _STATUS_S)


def _lock(directory: Path) -> int:
    """Blocking: hold the spool's worker lock (a previous worker may still be draining)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def run(
    config_path: Path, *, instance: str, fd: int, writer_pid: int, effects_since_ms: int = 0
) -> int:
    """Run until told to stop; return the exit code.

    Quota effects go back to ``serve`` only for records admitted at or after
    ``effects_since_ms`` (when this ``serve`` started): an earlier one's counters, persisted,
    already hold what their records did.
    """
    cfg = load_config(config_path)
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    w = _Worker(config_path, cfg, writer, effects_since_ms)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, w.stop.set)
    link = asyncio.create_task(w.serve_link(reader))
    lock = await asyncio.to_thread(_lock, cfg.metering.spool or DEFAULT_SPOOL_DIR)
    try:
        metering = Metering(cfg, instance=instance, expand=w.expand, writer_pid=writer_pid)
        metering.on_confirmed, metering.on_voided = w.confirmed, w.voided
        metering.on_orphans = w.orphans
        await metering.start()
        w.metering = metering
        tune_after_start()
        status = asyncio.create_task(w.report())
        await w.stop.wait()
        drained = await metering.stop()
        await status
    finally:
        os.close(lock)
    link.cancel()
    log.info("worker.stopped", drained=drained)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tollhouse.worker --config F --instance I --fd N --writer-pid P``."""
    p = argparse.ArgumentParser(prog="tollhouse.worker", description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--instance", required=True)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--writer-pid", type=int, required=True)
    p.add_argument("--log-level", default="info")
    p.add_argument("--effects-since-ms", type=int, default=0)
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return asyncio.run(
            run(
                Path(args.config),
                instance=args.instance,
                fd=args.fd,
                writer_pid=args.writer_pid,
                effects_since_ms=args.effects_since_ms,
            )
        )
    except Exception:
        log.error("worker.failed", exc=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
