"""The one object the app wires: spool (fact log + finaliser) + forwarder + access-log ingest."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tollhouse.config import Config
from tollhouse.logs import get_logger
from tollhouse.metering.join import Applied
from tollhouse.metering.metrics import (
    ENTRIES_IGNORED,
    HOOK_ERRORS,
    SERVED_ORPHANS,
    SINK_ERRORS,
    SINK_SENT,
    SPOOL_PENDING,
    SPOOL_UNSENT,
    USAGE_FINALIZED,
)
from tollhouse.metering.policy import Finalizer, LogEntry
from tollhouse.metering.redis_join import RedisJoin
from tollhouse.metering.schema import UsageRecord, state_name
from tollhouse.metering.sinks import MeterSink, SinkError, open_sink
from tollhouse.metering.spool import Expand, Spool, SpoolError, new_usage_id
from tollhouse.metering.tail import TailSpool

__all__ = [
    "DEFAULT_SPOOL_DIR",
    "Metering",
    "ReservationBuilder",
    "reservation",
    "warn_restart_needed",
]

log = get_logger(__name__)

DEFAULT_SPOOL_DIR = Path("tollhouse-spool")
_MAX_INFLIGHT_ENTRIES = 50_000  # above this, ingest waits for the writer (backpressure)
_HOUSEKEEPING_S = 1.0
_DONE_TTL_S = 3600.0  # how long Redis remembers a finalised usage id (late duplicates ignored)


def _remote_join(cfg: Config, sink: MeterSink | None) -> bool:
    """Join facts in Redis: ``join: redis``, or ``auto`` with a Redis meter and no test sink."""
    mode = cfg.metering.join
    is_redis = cfg.metering.meter.kind == "redis"
    return mode == "redis" or (mode == "auto" and is_redis and sink is None)


def warn_restart_needed(old: Config, new: Config) -> None:
    """Log the metering settings a reload cannot change (read once, at start)."""
    keys = ("spool", "meter", "join", "process")
    if any(getattr(old.metering, k) != getattr(new.metering, k) for k in keys):
        log.warning("metering.restart_needed", reason="spool, meter, join or process changed")


def reservation(
    units: Mapping[str, int],
    now: float,
    instance: str,
    *,
    customer: str,
    plan: str,
    feature: str,
    method: str,
    path: str,
    request_id: str,
    decision_id: str,
    degraded: bool,
) -> UsageRecord:
    """A RESERVED record with a fresh usage id admitted at ``now`` by ``instance``."""
    return UsageRecord(
        usage_id=new_usage_id(now),
        customer=customer,
        plan=plan,
        feature=feature,
        units=units,
        method=method,
        path=path,
        request_id=request_id,
        decision_id=decision_id,
        admitted_at_ms=int(now * 1000),
        state=UsageRecord.RESERVED,
        instance=instance,
        degraded=degraded,
    )


def _count_orphans(n: int) -> None:
    if n:
        SERVED_ORPHANS.inc(n)
        ENTRIES_IGNORED.labels(reason="unknown").inc(n)
        log.warning("metering.served_without_reservation", facts=n)


def _count_final(records: Sequence[UsageRecord]) -> None:
    tally = Tally((state_name(r.state), str(r.billable).lower()) for r in records)
    for (state, billable), n in tally.items():
        USAGE_FINALIZED.labels(state=state, billable=billable).inc(n)


class ReservationBuilder:
    """``build_reservation`` for both metering front ends: in process and the worker's front."""

    _finalizer: Finalizer
    _clock: Callable[[], float]
    _instance: str

    def build_reservation(
        self,
        *,
        customer: str,
        plan: str,
        feature: str,
        method: str,
        path: str,
        request_id: str,
        decision_id: str,
        degraded: bool = False,
        units: Mapping[str, int] | None = None,
    ) -> UsageRecord:
        """Build a RESERVED record with a fresh usage_id, the admission time and this instance.

        ``units``: the request's units from the Check's config snapshot; without it, from the
        config metering was last reconfigured with.
        """
        return reservation(
            self._finalizer.request_units(feature) if units is None else units,
            self._clock(),
            self._instance,
            customer=customer,
            plan=plan,
            feature=feature,
            method=method,
            path=path,
            request_id=request_id,
            decision_id=decision_id,
            degraded=degraded,
        )


class Metering(ReservationBuilder):
    """Usage metering: reserve at Check time, finalise from the access log, forward to the meter."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Callable[[], float] = time.time,
        instance: str,
        sink: MeterSink | None = None,
        max_backoff_s: float = 5.0,
        send_timeout_s: float = 10.0,
        expand: Expand | None = None,
        writer_pid: int | None = None,
    ) -> None:
        """``writer_pid``: this is the metering worker, reading the log that process writes.

        ``expand`` turns a raw access-log message (written by that process) into entries.
        """
        self._cfg = cfg
        self._clock = clock
        self._instance = instance
        self._finalizer = Finalizer(cfg)
        self.remote = _remote_join(cfg, sink)
        directory = cfg.metering.spool or DEFAULT_SPOOL_DIR
        self.spool: Spool | TailSpool
        if writer_pid is None:
            self.spool = Spool(
                directory,
                finalizer=lambda: self._finalizer,
                on_applied=self._applied,
                clock=clock,
                instance=instance,
                group_commit_ms=cfg.metering.group_commit_ms,
                remote=self.remote,
                expand=expand,
            )
        else:
            assert expand is not None
            self.spool = TailSpool(
                directory,
                finalizer=lambda: self._finalizer,
                on_applied=self._applied,
                expand=expand,
                clock=clock,
                instance=instance,
                remote=self.remote,
                writer_pid=writer_pid,
            )
        self._sink = sink
        self._rjoin: RedisJoin | None = None
        self._max_backoff_s = max_backoff_s
        self._send_timeout_s = send_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._inflight = 0
        self._stopping = False
        self._forward_lock = asyncio.Lock()
        self._last_housekeeping = float("-inf")
        self.on_confirmed: Callable[[UsageRecord], None] | None = None
        self.on_voided: Callable[[UsageRecord], None] | None = None  # quota units back
        self.on_orphans: Callable[[int], None] | None = None  # served facts never reserved

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool (replaying whatever it holds) and start forwarding to the meter."""
        await self.spool.open()
        if self.remote:
            grace = self._cfg.metering.unconfirmed_after_s
            self._rjoin = RedisJoin(
                self._cfg.metering.meter.url,
                consumer=self._instance,
                ttl_s=max(_DONE_TTL_S, 2 * grace),
                void_ttl_s=min(grace, 60.0),
                timeout_s=self._send_timeout_s,
            )
        elif self._sink is None:
            self._sink = open_sink(self._cfg.metering.meter)
        self._task = asyncio.create_task(self._run(), name="tollhouse-metering")
        log.info("metering.started", spool=str(self.spool.path), meter=self._meter_name())

    async def stop(self, deadline_s: float | None = None) -> bool:
        """Stop forwarding, send what can be sent within the deadline, close; True if all sent."""
        if self._task is not None:
            self._stopping = True
            # Cancel until it ends: Python 3.11's wait_for can swallow a cancellation that
            # arrives as the awaited call completes (fixed in 3.12).
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait([self._task], timeout=0.1)
            self._task = None
        budget = min(self._cfg.shutdown_grace_s, 5.0) if deadline_s is None else deadline_s
        drained = False
        if not self.spool.closed:
            with contextlib.suppress(SpoolError):
                await self.spool.barrier()  # facts queued before stop are joined first
            drained = await self._drain(budget)
            await self.spool.close()
        if self._sink is not None:
            await self._sink.close()
        if self._rjoin is not None:
            await self._rjoin.close()
        log.info("metering.stopped", drained=drained)
        return drained

    def reconfigure(self, cfg: Config) -> None:
        """Apply a new config's billing policy to records finalised from now on."""
        warn_restart_needed(self._cfg, cfg)
        self._cfg = cfg
        self._finalizer = Finalizer(cfg)

    # ---- the Check path --------------------------------------------------------------------

    async def reserve(self, record: UsageRecord, deadline_s: float | None = None) -> None:
        """Write the reserved fact durably; raise :class:`SpoolError` if it cannot be written.

        Raises :class:`TimeoutError` if it is not durable within ``deadline_s`` (then voided).
        """
        if not isinstance(self.spool, Spool):
            raise SpoolError("the metering worker takes no reservations")
        await self.spool.reserve(record, deadline_s)

    # ---- the access log --------------------------------------------------------------------

    async def ingest(self, entries: Sequence[LogEntry]) -> None:
        """Write served facts for entries (with usage ids); waits only under heavy backlog."""
        if not entries:
            return
        if not isinstance(self.spool, Spool):
            raise SpoolError("the metering worker reads the access log from the fact log")
        fut = self.spool.served(entries, int(self._clock() * 1000))
        if fut is None:
            return
        n = len(entries)
        self._inflight += n
        fut.add_done_callback(lambda f: self._written(f, n))
        if self._inflight > _MAX_INFLIGHT_ENTRIES:
            await asyncio.wait([fut])

    def _written(self, fut: asyncio.Future[None], n: int) -> None:
        self._inflight -= n
        if not fut.cancelled() and fut.exception() is not None:
            ENTRIES_IGNORED.labels(reason="error").inc(n)
            log.error("metering.ingest_failed", error=type(fut.exception()).__name__, entries=n)

    def _applied(self, res: Applied) -> None:
        """Facts became durable and were joined: count, and tell the quota hooks."""
        if res.duplicate:
            ENTRIES_IGNORED.labels(reason="duplicate").inc(res.duplicate)
        if res.errors:
            ENTRIES_IGNORED.labels(reason="error").inc(res.errors)
        _count_final(res.finalized)
        hooks = {UsageRecord.CONFIRMED: self.on_confirmed, UsageRecord.VOIDED: self.on_voided}
        for rec in res.finalized:
            hook = hooks.get(rec.state)
            if hook is not None:
                try:
                    hook(rec)
                except Exception:
                    HOOK_ERRORS.inc()
                    log.error("metering.hook_failed", exc=True, usage_id=rec.usage_id)

    # ---- forwarding ------------------------------------------------------------------------

    def _meter_name(self) -> str:
        return self._cfg.metering.meter.display  # never log a password

    async def _run(self) -> None:
        backoff = 0.0
        interval = self._cfg.metering.flush_interval_ms / 1000.0
        while True:
            try:
                await self.tick()
                backoff = 0.0
                delay = self._cfg.metering.flush_interval_ms / 1000.0
            except (SinkError, SpoolError) as e:
                SINK_ERRORS.inc()
                backoff = min(max(backoff * 2, interval), self._max_backoff_s)
                delay = backoff * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not crypto)
                log.warning("metering.forward_failed", error=str(e), retry_in_s=round(delay, 3))
            except Exception:
                log.error("metering.loop_error", exc=True)
                delay = interval
            await asyncio.sleep(delay)

    async def tick(self) -> int:
        """One round: expire overdue reservations and orphans, forward full batches."""
        now = self._clock()
        await self.spool.barrier()  # every fact received before `now` is joined first
        now_ms = int(now * 1000)
        cutoff = now_ms - int(self._cfg.metering.unconfirmed_after_s * 1000)
        if self._rjoin is not None:
            sent = await self._tick_remote(self._rjoin, cutoff)
        else:
            expired, orphans = await self.spool.expire(cutoff, now_ms, self._finalizer)
            _count_final(expired)
            self._orphans(orphans)
            sent = await self._forward_rounds()
        if now - self._last_housekeeping >= _HOUSEKEEPING_S:
            self._last_housekeeping = now
            SPOOL_PENDING.set(self.spool.join.pending_count)
            unsent = len(self.spool.outbox) if self.remote else self.spool.join.unsent_count
            SPOOL_UNSENT.set(unsent)
        return sent

    def _orphans(self, n: int) -> None:
        """Count served facts dropped without a reservation, and tell ``on_orphans``."""
        _count_orphans(n)
        if n and self.on_orphans is not None:
            try:
                self.on_orphans(n)
            except Exception:
                log.error("metering.orphans_hook_failed", exc=True)

    async def _forward_rounds(self) -> int:
        sent = 0
        for _ in range(20):  # bounded, so expiry keeps running under load
            n = await self.forward_once()
            sent += n
            if n < self._cfg.metering.batch_size:
                break
        return sent

    async def _tick_remote(self, rjoin: RedisJoin, cutoff_ms: int) -> int:
        """Facts to Redis, the shared sweep once this replica has caught up, then finalise."""
        sent = await self._forward_rounds()
        if not self.spool.outbox:
            expired, orphans = await rjoin.sweep(cutoff_ms)
            self._orphans(orphans)
            if expired:
                sent += await self._forward_rounds()
        return sent

    async def forward_once(self) -> int:
        """Send one batch of final records to the meter; they are done only after the ack."""
        async with self._forward_lock:  # the forwarder task, a manual tick() and stop() share it
            return await self._forward_once()

    async def _forward_once(self) -> int:
        if self._rjoin is not None:
            return await self._forward_remote_once(self._rjoin)
        if self._sink is None:
            raise SinkError("metering is not started")
        records = self.spool.join.unsent(self._cfg.metering.batch_size)
        if not records:
            return 0
        try:
            await asyncio.wait_for(self._sink.send(records), self._send_timeout_s)
        except TimeoutError as e:
            raise SinkError("the meter did not acknowledge in time") from e
        self.spool.join.acknowledged([r.usage_id for r in records])
        SINK_SENT.inc(len(records))
        return len(records)

    async def _forward_remote_once(self, rjoin: RedisJoin) -> int:
        """One batch of local facts to the shared join, one batch of joined entries finalised."""
        size = self._cfg.metering.batch_size
        facts = [f for f, _ in itertools.islice(self.spool.outbox, size)]
        if facts:
            counts = await rjoin.send(facts, self._finalizer.header_names)
            self.spool.forwarded(len(facts))
            if counts.duplicate:
                ENTRIES_IGNORED.labels(reason="duplicate").inc(counts.duplicate)
        records, poison = await rjoin.finalise(self._finalizer, size)
        if poison:
            ENTRIES_IGNORED.labels(reason="error").inc(poison)
        self._applied(Applied(finalized=records))
        SINK_SENT.inc(len(records))
        return max(len(facts), len(records) + poison)

    async def _drain(self, budget_s: float) -> bool:
        deadline = time.monotonic() + budget_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                n = await asyncio.wait_for(self.forward_once(), left)
                if n == 0:
                    return True
        except (SinkError, SpoolError, TimeoutError) as e:
            log.warning("metering.drain_incomplete", error=str(e))
        return False
