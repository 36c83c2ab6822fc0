"""Metering as the Check process sees it when a worker process finalises usage.

``metering.process: worker`` (the default): the process serving Checks writes facts
(:class:`~tollhouse.metering.writer.FactWriter`) and supervises the metering worker
(:class:`~tollhouse.metering.worker_link.WorkerProcess`), which does the rest. This object has
the Check path's interface of :class:`~tollhouse.metering.Metering` (``build_reservation``,
``reserve``), takes access-log messages undecoded, and applies the quota effects the worker
sends back through the ``on_confirmed`` / ``on_voided`` hooks, on this process's event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from tollhouse.config import Config
from tollhouse.logs import get_logger
from tollhouse.metering.metrics import HOOK_ERRORS
from tollhouse.metering.policy import Finalizer
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.service import (
    DEFAULT_SPOOL_DIR,
    ReservationBuilder,
    warn_restart_needed,
)
from tollhouse.metering.worker_link import WorkerProcess
from tollhouse.metering.writer import FactWriter

__all__ = ["MeteringFront"]

log = get_logger(__name__)

_APPLIED_MAX = 200_000  # usage ids whose quota effect was applied (worker restarts resend)


class MeteringFront(ReservationBuilder):
    """Reservations and access-log messages to the fact log; the worker finalises them."""

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: Path,
        clock: Callable[[], float] = time.time,
        instance: str,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._instance = instance
        self._finalizer = Finalizer(cfg)
        self.writer = FactWriter(
            cfg.metering.spool or DEFAULT_SPOOL_DIR,
            clock=clock,
            instance=instance,
            group_commit_ms=cfg.metering.group_commit_ms,
        )
        self.worker = WorkerProcess(
            config_path, instance=instance, on_record=self._record, on_orphans=self._orphans
        )
        self.on_confirmed: Callable[[UsageRecord], None] | None = None
        self.on_voided: Callable[[UsageRecord], None] | None = None
        self.on_orphans: Callable[[int], None] | None = None
        # A restarted worker replays and sends some records again: apply each once.
        self._applied: OrderedDict[str, None] = OrderedDict()

    async def start(self) -> None:
        """Open the fact log (warmed, legacy spool carried over), then start the worker."""
        await self.writer.open()
        await self.worker.start()
        log.info("metering.started", spool=str(self.writer.directory), process="worker")

    async def stop(self, deadline_s: float | None = None) -> bool:
        """Close the log (everything queued is written), then let the worker drain and exit."""
        budget = min(self._cfg.shutdown_grace_s, 5.0) if deadline_s is None else deadline_s
        if not self.writer.closed:
            await self.writer.close()
        code = await self.worker.stop(budget)
        log.info("metering.stopped", worker_exit_code=code)
        return code == 0

    def reconfigure(self, cfg: Config) -> None:
        """Apply a reloaded config here (request units) and in the worker (billing policy)."""
        warn_restart_needed(self._cfg, cfg)
        self._cfg = cfg
        self._finalizer = Finalizer(cfg)
        self.worker.reload()

    async def reserve(self, record: UsageRecord, deadline_s: float | None = None) -> None:
        """Write the reserved fact durably (see :meth:`FactWriter.reserve`)."""
        await self.writer.reserve(record, deadline_s)

    def access_log(self, message: bytes) -> None:
        """One access-log message, as Envoy sent it, for the worker to decode."""
        self.writer.access_log(message)

    def status(self) -> dict[str, object]:
        """What /readyz says about metering."""
        return {"process": "worker", **self.worker.status, "restarts": self.worker.restarts}

    def _orphans(self, n: int) -> None:
        if self.on_orphans is not None:
            self.on_orphans(n)

    def _record(self, payload: bytes) -> None:
        rec = UsageRecord.FromString(payload)
        if rec.usage_id in self._applied:
            return
        self._applied[rec.usage_id] = None
        if len(self._applied) > _APPLIED_MAX:
            self._applied.popitem(last=False)
        hook = (
            self.on_confirmed
            if rec.state == UsageRecord.CONFIRMED
            else (self.on_voided if rec.state == UsageRecord.VOIDED else None)
        )
        if hook is None:
            return
        try:
            hook(rec)
        except Exception:
            HOOK_ERRORS.inc()
            log.error("metering.hook_failed", exc=True, usage_id=rec.usage_id)
