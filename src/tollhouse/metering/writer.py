"""The Check process's side of metering when a worker finalises: write facts, nothing else.

With ``metering.process: worker`` (the default) the process that serves Checks only appends to
its fact log: a reserved fact per admitted request (durable before the OK, as before), a void
fact when a Check gives up after writing one, and each access-log message exactly as Envoy sent
it (no decoding here). The log publishes its durable watermark
(:mod:`tollhouse.metering.watermark`); the metering worker process
(:mod:`tollhouse.metering.tail`) reads up to it and does everything else: decoding, joining,
finalising, forwarding and deleting segments. So the Checks' event loop pays one serialized
record, one queue put and one future per reservation, and no work per access-log entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from tollhouse.logs import get_logger
from tollhouse.metering.deadlines import Deadlines
from tollhouse.metering.factlog import FactLog, SpoolError, Written
from tollhouse.metering.factlog_format import MAX_RECORD
from tollhouse.metering.facts import (
    Served,
    encode_access_log,
    encode_reserved,
    encode_served,
)
from tollhouse.metering.join import void_entry
from tollhouse.metering.legacy import legacy_payloads, read_legacy, retire_legacy
from tollhouse.metering.metrics import FACTS_LOST, USAGE_RESERVED
from tollhouse.metering.schema import UsageRecord

__all__ = ["FactWriter"]

log = get_logger(__name__)


def _ignore(_: Written) -> None:
    """Nothing joins here: the worker reads the facts back from the log."""


class FactWriter:
    """Appends facts to the log in ``directory`` and publishes how far it is durable."""

    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], float] = time.time,
        instance: str = "",
        group_commit_ms: float = 0.0,
    ) -> None:
        self.directory = Path(directory)
        self._clock = clock
        self._instance = instance
        self._deadlines = Deadlines()
        self.log = FactLog(
            self.directory, on_durable=_ignore, group_commit_ms=group_commit_ms, watermark=True
        )

    async def open(self) -> None:
        """Open a warmed segment, start writing, carry over a previous release's spool.db."""
        await asyncio.to_thread(self.log.open)
        self.log.start()
        try:
            legacy = await asyncio.to_thread(read_legacy, self.directory)
        except Exception as e:
            raise SpoolError(f"cannot read the old spool in {self.directory}: {e}") from e
        if legacy is None:
            return
        payloads = legacy_payloads(legacy)
        if payloads:
            fut = self.log.append(payloads, ())
            assert fut is not None
            await fut
        await asyncio.to_thread(retire_legacy, self.directory)
        log.info("spool.legacy_migrated", facts=len(payloads))

    async def close(self) -> None:
        """Write what is queued and close the log."""
        await self.log.close()

    @property
    def closed(self) -> bool:
        """True before :meth:`open` and after :meth:`close`."""
        return self.log.closed

    async def reserve(self, record: UsageRecord, deadline_s: float | None = None) -> None:
        """Write a reserved fact; durable (fdatasynced) when this returns.

        Raises :class:`SpoolError` when it cannot be written, :class:`TimeoutError` when it is
        not durable within ``deadline_s``; then (and on cancellation) a void fact follows it.
        """
        if not record.usage_id:
            raise SpoolError("a usage record needs a usage_id")
        fut = self.log.append((encode_reserved(record.SerializeToString()),), ())
        assert fut is not None
        if deadline_s is not None:
            self._deadlines.add(fut, deadline_s)
        try:
            await fut
        except (asyncio.CancelledError, TimeoutError):
            self.void(record.usage_id, record.request_id, "check_cancelled")
            raise
        USAGE_RESERVED.inc()

    def void(self, usage_id: str, request_id: str, reason: str) -> None:
        """Queue a fact that voids a reservation the Check will not answer OK for."""
        fact = Served(void_entry(usage_id, request_id, reason), self._now_ms(), self._instance)
        try:
            self.log.append((encode_served(fact, ()),), (), wait=False)
        except SpoolError:
            log.error("spool.void_failed", usage_id=usage_id)

    def access_log(self, message: bytes) -> None:
        """Queue one access-log message as received (a failed write is counted by the log)."""
        payload = encode_access_log(message, self._now_ms(), self._instance)
        if len(payload) > MAX_RECORD:  # larger than gRPC's 4 MiB receive limit: cannot happen
            FACTS_LOST.inc()
            log.error("spool.access_log_too_large", size=len(payload))
            return
        try:
            self.log.append((payload,), (), wait=False)
        except SpoolError:  # closed: the stream outlived the drain
            FACTS_LOST.inc()
            log.error("spool.access_log_after_close", size=len(payload))

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
