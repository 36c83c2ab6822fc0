"""Where the spend of each credit grant is counted: this process, or Redis shared by replicas.

A :class:`GrantCounter` is one grant as this replica sees it. The shared total counts what every
replica has *leased* of the grant (spent, plus lease units not yet spent); a lease never takes
the total past the grant's amount (the quota limiter's Lua script, ``overage: deny``), so no
request-time spend can exceed a grant. Spend known only after the response (bytes, tokens) is
added as a debt and may pass it (the over-spend bound in ``docs/credits.md``).

* :class:`MemoryCounters`: one replica; totals start from the store's consumed (``seed``).
* :class:`RedisCounters`: ``tollhouse:credit:{customer}:grant`` keys, leased with
  :meth:`tollhouse.quota.redis_io.RedisIO.lease` (bounded, circuit-broken, receipts for replies
  that never arrived); a key Redis lost is re-seeded from the store's consumed or the last total.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from tollhouse.logs import get_logger
from tollhouse.store.credit_models import MILLI, CreditGrant

__all__ = ["CreditCounters", "GrantCounter", "MemoryCounters", "RedisCounters", "open_counters"]

log = get_logger(__name__)
NO_EXPIRY_S = 4_102_444_800  # 2100-01-01: the window end of a grant that never expires


class GrantCounter:
    """One grant's counting state in this replica (all in 1/1000 minor units)."""

    __slots__ = (
        "amount",
        "checked_at",
        "customer",
        "end_s",
        "grant_id",
        "key",
        "last_grant",
        "last_spend",
        "left",
        "refill",
        "seed",
        "start_s",
        "state",
        "total",
        "unflushed",
    )

    def __init__(self, g: CreditGrant, seed: int) -> None:
        self.grant_id = g.id
        self.customer = g.customer
        self.key = f"tollhouse:credit:{{{g.customer}}}:{g.id}"
        self.amount = g.amount * MILLI
        self.start_s = int(g.effective_at)
        self.end_s = NO_EXPIRY_S if g.expires_at is None else int(g.expires_at)
        self.seed = seed  # consumed as the store knew it when this replica first saw the grant
        self.total = seed  # leased by all replicas, as last seen
        self.left = 0  # leased to this replica, not yet spent
        self.unflushed = 0  # spent here, not yet added to the store's credit_consumed
        self.last_grant = 0
        self.last_spend = 0.0
        self.checked_at = -1e18
        self.state = "new"  # the last lease: "ok" | "exhausted" (nothing left) | "error"
        self.refill: asyncio.Task[None] | None = None

    def remaining(self) -> int:
        """What this replica believes is left of the grant (others' unspent leases count spent)."""
        return max(0, self.amount - self.total) + self.left


class CreditCounters(Protocol):
    """The shared totals of grants."""

    replicas: int

    async def lease(self, ctr: GrantCounter, want: int) -> int | None:
        """Lease up to ``want`` of the grant (updates ``ctr.total``); None: could not ask."""

    async def add(self, items: Sequence[tuple[GrantCounter, int]]) -> bool:
        """Add each delta to its grant's total (negative: lease units given back)."""

    async def tick(self) -> None:
        """Background upkeep (replica heartbeat, lost replies), once a flush interval."""

    async def close(self) -> None:
        """Release connections."""


class MemoryCounters:
    """Totals in this process: exact for one replica."""

    replicas = 1

    def __init__(self) -> None:
        self._used: dict[str, int] = {}

    async def lease(self, ctr: GrantCounter, want: int) -> int | None:
        """Take up to ``want`` of what is left."""
        used = self._used.setdefault(ctr.key, ctr.seed)
        grant = max(0, min(want, ctr.amount - used))
        self._used[ctr.key] = ctr.total = used + grant
        return grant

    async def add(self, items: Sequence[tuple[GrantCounter, int]]) -> bool:
        """Apply the deltas."""
        for ctr, delta in items:
            used = self._used.get(ctr.key, ctr.seed) + delta
            self._used[ctr.key] = ctr.total = used
        return True

    async def tick(self) -> None:
        """Nothing to do."""

    async def close(self) -> None:
        """Nothing to close."""


class RedisCounters:
    """Totals in Redis, shared by every replica; each call bounded by ``timeout_s``."""

    def __init__(
        self, url: str, *, clock: Callable[[], float], instance: str, timeout_s: float = 0.05
    ) -> None:
        from tollhouse.quota.redis_io import RedisIO

        self._io = RedisIO(url, clock=clock, timeout_s=timeout_s)
        self._instance = instance
        self._seq = 0
        self._lost: list[tuple[GrantCounter, str, int]] = []
        self.replicas = 1

    async def lease(self, ctr: GrantCounter, want: int) -> int | None:
        """One lease round trip (Redis TIME decides whether the grant is in its window)."""
        if not self._io.available():
            return None
        self._seq += 1
        receipt = f"tollhouse:credit:receipt:{self._instance}:{self._seq}"
        res = await self._io.lease(
            ctr.key,
            receipt,
            ctr.amount,
            want,
            ctr.start_s,
            ctr.end_s,
            "deny",
            max(ctr.total, ctr.seed),
        )
        if res is None:
            self._lost.append((ctr, receipt, 0))
            return None
        grant, total, _, _ = res
        if grant < 0:  # outside the grant's window by Redis's clock: nothing to lease
            return 0
        ctr.total = total
        return grant

    async def add(self, items: Sequence[tuple[GrantCounter, int]]) -> bool:
        """Add the deltas in one round trip; the new totals are read back."""
        from tollhouse.quota.redis_io import RETAIN_S

        res = await self._io.add(
            [(c.key, d, c.end_s + RETAIN_S, max(c.total, c.seed)) for c, d in items]
        )
        if res is None:
            return False
        for (ctr, _), total in zip(items, res, strict=True):
            ctr.total = total
        return True

    async def tick(self) -> None:
        """Heartbeat (the live replica count sizes leases) and take back lost leases' units."""
        n = await self._io.heartbeat(self._instance, 5.0)
        if n is None:
            return
        self.replicas = max(1, n)
        lost, self._lost = self._lost, []
        res = await self._io.reclaim([r for _, r, _ in lost])
        back = []
        for (ctr, receipt, tries), units in zip(lost, res or [0] * len(lost), strict=True):
            if units > 0:
                back.append((ctr, -units))
            elif tries < 3:  # the command may still be queued in a Redis that just came back
                self._lost.append((ctr, receipt, tries + (res is not None)))
        if back and not await self.add(back):
            log.warning("credits.reclaim_failed", grants=len(back))

    async def close(self) -> None:
        """Close the pool."""
        await self._io.close()


def open_counters(counters: str, *, clock: Callable[[], float], instance: str) -> CreditCounters:
    """``counters: memory`` -> this process; ``redis://`` -> shared through Redis."""
    if counters.startswith("redis://"):
        return RedisCounters(counters, clock=clock, instance=instance)
    return MemoryCounters()
