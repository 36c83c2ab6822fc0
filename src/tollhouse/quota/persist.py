"""What keeps the embedded counters across restarts: leases written ahead to the counter file.

The Check never waits on disk. For a request-counted meter the limiter counts exactly in
memory, and the file holds a *ceiling* written ahead of it: when the units admitted come within
half a lease of the ceiling, the ceiling moves one lease on (``min(lease_size, room // 2)`` with
``overage: deny``, never past the quota) and a background task commits it. After a crash the
restarted process counts the ceiling as used: it may under-admit by the unspent lease, and it
over-admits only what was admitted beyond a ceiling not yet committed. Post-hoc units (bytes,
tokens) are written behind, every ``flush_s``. A clean stop writes the exact counts (the unspent
leases come back). Bounds: ``docs/quota.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from pathlib import Path

from tollhouse.logs import get_logger
from tollhouse.periods import Period
from tollhouse.quota import metrics
from tollhouse.quota.counter_file import CounterFile, CounterFileError, Row
from tollhouse.quota.limiter import Limits
from tollhouse.quota.machinery import RateBuckets

__all__ = ["CounterSaver", "CustomerCounts"]

log = get_logger(__name__)


class CustomerCounts:
    """One customer of the embedded limiter: period, units used, leased ceilings, buckets."""

    __slots__ = ("anchor", "ceil", "grant", "name", "period", "plan", "quotas", "rate", "used")

    def __init__(
        self, name: str, period: Period, anchor: date | None, used: Mapping[str, int]
    ) -> None:
        self.name = name
        self.period = period
        self.anchor = anchor
        self.used: dict[str, int] = dict(used)
        self.ceil: dict[str, int] = dict(used)  # units covered by the counter file (or to be)
        self.grant: dict[str, int] = {}  # size of the last lease per meter
        self.rate = RateBuckets()
        self.plan = ""
        self.quotas: Mapping[str, int] = {}

    def restart_period(self, period: Period, used: Mapping[str, int]) -> None:
        """Move to ``period`` with the units the counter file holds for it."""
        self.period = period
        self.used, self.ceil, self.grant = dict(used), dict(used), {}


class CounterSaver:
    """The counter file's writer: loads at start, commits leases in the background."""

    def __init__(
        self, path: Path, *, clock: Callable[[], float], lease_size: int, flush_s: float = 1.0
    ) -> None:
        self.file = CounterFile(path)
        self._clock = clock
        self._lease = max(1, lease_size)
        self._flush_s = flush_s
        self._loaded: dict[tuple[str, str], dict[str, int]] = {}
        self._dirty: dict[tuple[str, str], CustomerCounts] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._writing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """Something is still to be committed, or a commit is in flight."""
        return bool(self._dirty) or self._writing

    async def start(self) -> None:
        """Read the counter file (before the process serves), then start the writer."""
        self._loaded = await asyncio.to_thread(self.file.open, self._clock())
        log.info("quota.counters_loaded", path=str(self.file.path), counters=len(self._loaded))
        self._task = asyncio.create_task(self._loop(), name="tollhouse-quota-counters")

    def seed(self, customer: str, period_key: str) -> dict[str, int]:
        """Units the counter file holds for ``customer`` in that period (taken once)."""
        return self._loaded.pop((customer, period_key), {})

    def spent(self, c: CustomerCounts, meter: str, n: int, limits: Limits) -> None:
        """``n`` units of ``meter`` are admitted now: move the ceiling on when it comes near."""
        ceil = c.ceil.get(meter, 0)
        if ceil - n > c.grant.get(meter, 0) // 2:
            return  # the hot path: one lookup and a comparison
        quota = limits.quotas.get(meter)
        if quota is not None and limits.overage == "deny":
            new = max(n, min(n + max(1, min(self._lease, (quota - n) // 2)), quota))
        else:
            new = n + self._lease
        if new <= ceil:
            return
        c.grant[meter], c.ceil[meter] = new - n, new
        self._dirty[(c.name, meter)] = c
        self._wake.set()

    def touched(self, c: CustomerCounts, meter: str) -> None:
        """Post-hoc units changed: written with the next flush (at most ``flush_s`` later)."""
        self._dirty[(c.name, meter)] = c

    async def _loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_s)
            self._wake.clear()
            if not self._dirty:
                continue
            batch, self._dirty = self._dirty, {}
            rows = [
                (name, m, c.period.key, c.period.end_s, max(c.used.get(m, 0), c.ceil.get(m, 0)))
                for (name, m), c in batch.items()
            ]
            if not await self._write(rows):
                for key, c in batch.items():
                    self._dirty.setdefault(key, c)
                await asyncio.sleep(self._flush_s)  # a failing disk is retried, not hammered

    async def _write(self, rows: list[Row]) -> bool:
        self._writing = True
        try:
            await asyncio.to_thread(self.file.write, rows)
        except CounterFileError as e:
            metrics.COUNTER_FILE_ERRORS.inc()
            log.error("quota.counter_file_failed", error=str(e), rows=len(rows))
            return False
        finally:
            self._writing = False
        metrics.COUNTER_FILE_WRITES.inc()
        return True

    async def stop(self, customers: Iterable[CustomerCounts]) -> None:
        """Stop the writer, write the exact counts (unspent leases come back), close."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        rows = [
            (c.name, m, c.period.key, c.period.end_s, units)
            for c in customers
            for m, units in c.used.items()
        ]
        if rows:
            await self._write(rows)
        await asyncio.to_thread(self.file.close)
