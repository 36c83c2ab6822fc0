"""The credit balance as the Check spends it: leased per grant, spent locally, flushed to the store.

Each prepaid request's cost (:class:`tollhouse.credits.prices.CreditPrices`) is taken from the
customer's usable grants in consumption order (priority, then expiry), out of lease units this
replica holds. A request waits on the counters (at most ``timeout_s``) only when the leases it
needs are empty; a lease is refilled in the background when it runs below half of the last one.
Leases are sized to at most half the grant's room divided by the live replicas, so that the last
units are not stuck in one replica, and a lease idle for ``idle_return_s`` is given back.

What was spent is added to the store's ``credit_consumed`` every ``flush_interval_s``; that is the
record the balance restarts from. Bounds (``docs/credits.md``): request-time spend never exceeds a
grant; spend known after the response may, by what requests in flight cost after their response;
a replica that dies loses at most one flush interval of spend (its leases stay counted as spent).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter

from tollhouse.credits.counters import CreditCounters, GrantCounter
from tollhouse.logs import get_logger
from tollhouse.store.credit_models import MILLI, CreditGrant

__all__ = ["CreditBook", "Shortfall", "Spend"]

log = get_logger(__name__)
Flush = Callable[[Sequence[tuple[str, int]]], Awaitable[None]]
SPENDS = Counter("tollhouse_credit_spends_total", "Prepaid admissions by result", ["result"])
FLUSH_ERRORS = Counter(
    "tollhouse_credit_flush_errors_total",
    "Flushes of spent credit to the store that failed (retried next interval)",
)
UNPAID = Counter(
    "tollhouse_credit_unpaid_milli_total",
    "Post-response cost (1/1000 minor units) no usable grant could take",
)


@dataclass(slots=True)
class Spend:
    """What one admission took, per grant, so that :meth:`CreditBook.release` can give it back."""

    customer: str
    taken: tuple[tuple[GrantCounter, int], ...]
    released: bool = field(default=False)


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a request was not admitted: ``exhausted`` (402) or ``unavailable`` (503)."""

    reason: str
    balance: int  # 1/1000 minor units left that the request could use


class CreditBook:
    """Per process: the grant counters of every prepaid customer seen."""

    def __init__(
        self,
        counters: CreditCounters,
        *,
        clock: Callable[[], float],
        seed: Callable[[str], int],
        flush: Flush | None,
        lease_milli: int = 100_000,
        timeout_s: float = 0.05,
        flush_interval_s: float = 1.0,
        idle_return_s: float = 5.0,
        recheck_s: float = 1.0,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.counters = counters
        self._clock = clock
        self._seed = seed
        self._flush_to_store = flush
        self._lease_milli = max(1, lease_milli)
        self._timeout_s = timeout_s
        self.flush_interval_s = flush_interval_s
        self._idle_return_s = idle_return_s
        self._recheck_s = recheck_s
        self._on_stop = on_stop
        self._grants: dict[str, GrantCounter] = {}
        self._debts: dict[GrantCounter, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    # --- the hot path ----------------------------------------------------------------------

    def counter(self, g: CreditGrant) -> GrantCounter:
        """Return this replica's counter of ``g`` (made on first sight, seeded from the store)."""
        ctr = self._grants.get(g.id)
        if ctr is None:
            ctr = self._grants[g.id] = GrantCounter(g, self._seed(g.id))
        return ctr

    def _usable(
        self, grants: Sequence[CreditGrant], meter: str, feature: str, now: float
    ) -> list[GrantCounter]:
        return [self.counter(g) for g in grants if g.usable(now) and g.covers(meter, feature)]

    def _plan(
        self, grants: Sequence[CreditGrant], costs: Mapping[str, int], feature: str, now: float
    ) -> tuple[dict[GrantCounter, int], list[GrantCounter] | None]:
        """Units to take per counter; and None, or the counters to refill (maybe none) if short."""
        take: dict[GrantCounter, int] = {}
        short: list[GrantCounter] | None = None
        for meter, cost in costs.items():
            usable = self._usable(grants, meter, feature, now)
            need = max(cost, 1)  # a meter priced after the response still needs some balance
            for ctr in usable:
                t = min(ctr.left - take.get(ctr, 0), need)
                if t > 0:
                    take[ctr] = take.get(ctr, 0) + min(t, cost)
                    need -= t
                if need <= 0:
                    break
            if need > 0:
                short = short or []
                short.extend(c for c in usable if c not in short)
        return {c: t for c, t in take.items() if t > 0}, short

    async def spend(
        self,
        customer: str,
        grants: Sequence[CreditGrant],
        costs: Mapping[str, int],
        feature: str,
        now: float,
    ) -> Spend | Shortfall:
        """Take ``costs`` (meter -> 1/1000 minor units) from the usable grants, or say why not."""
        take, short = self._plan(grants, costs, feature, now)
        ok, started = True, self._clock()
        try:  # until the plan is covered, a counter fails, or every short grant is used up:
            # a refill may bring too little, or concurrent requests may spend it first
            async with asyncio.timeout(self._timeout_s):
                while short is not None and ok and not self._used_up(short, started):
                    ok = await self._obtain(short, sum(costs.values()))
                    take, short = self._plan(grants, costs, feature, now)
        except TimeoutError:
            ok = False
            take, short = self._plan(grants, costs, feature, now)
        if short is not None:
            SPENDS.labels("exhausted" if ok else "unavailable").inc()
            return Shortfall("exhausted" if ok else "unavailable", self.balance(grants, now))
        for ctr, units in take.items():
            ctr.left -= units
            ctr.unflushed += units
            ctr.last_spend = now
            if ctr.left * 2 < ctr.last_grant and ctr.refill is None and ctr.state == "ok":
                self._start_refill(ctr, units)
        SPENDS.labels("ok").inc()
        return Spend(customer, tuple(take.items()))

    def release(self, spend: Spend) -> None:
        """Give back what an admission took (its request was never let through)."""
        if spend.released:
            return
        spend.released = True
        for ctr, units in spend.taken:
            ctr.left += units
            ctr.unflushed -= units

    def _used_up(self, short: list[GrantCounter], since: float) -> bool:
        """Every short counter was found empty by a lease since ``since`` or within recheck_s."""
        now = self._clock()
        return all(
            c.state == "exhausted"
            and c.refill is None
            and (c.checked_at >= since or now - c.checked_at < self._recheck_s)
            for c in short
        )

    async def _obtain(self, short: list[GrantCounter], need: int) -> bool:
        """Refill the short counters (or wait for their refill); False if one could not ask."""
        now = self._clock()
        waits = [
            c.refill or self._start_refill(c, need)
            for c in short
            if not (c.state == "exhausted" and now - c.checked_at < self._recheck_s)
        ]
        if waits:  # shielded: a refill cut off by the deadline still lands its units
            await asyncio.shield(asyncio.gather(*waits))
        return not any(c.state == "error" for c in short)

    def _start_refill(self, ctr: GrantCounter, need: int) -> asyncio.Task[None]:
        task = asyncio.create_task(self._refill(ctr, need))
        ctr.refill = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _refill(self, ctr: GrantCounter, need: int) -> None:
        try:
            room = max(0, ctr.amount - ctr.total)
            want = max(need, 1, min(self._lease_milli, room // (2 * self.counters.replicas)))
            if need > 0:  # whole requests: no remainder too small to pay for one is stranded
                want -= want % need
            got = await self.counters.lease(ctr, want)
            ctr.checked_at = self._clock()
            if got is None:
                ctr.state = "error"
                return
            ctr.left += got
            ctr.last_grant = got
            ctr.state = "exhausted" if got < want else "ok"
        finally:
            ctr.refill = None

    # --- after the response ----------------------------------------------------------------

    def charge(
        self, grants: Sequence[CreditGrant], meter: str, feature: str, cost: int, now: float
    ) -> None:
        """Spend known only from the access log: from leases first, then as a debt (may pass 0)."""
        usable = self._usable(grants, meter, feature, now)
        for ctr in usable:
            t = min(ctr.left, cost)
            if t > 0:
                ctr.left -= t
                ctr.unflushed += t
                cost -= t
        if cost <= 0:
            return
        if not usable:
            UNPAID.inc(cost)
            return
        ctr = usable[0]
        ctr.unflushed += cost
        self._debts[ctr] = self._debts.get(ctr, 0) + cost

    def refund(
        self, grants: Sequence[CreditGrant], meter: str, feature: str, cost: int, now: float
    ) -> None:
        """A reservation never served: its cost goes back to the first usable grant it could use."""
        usable = self._usable(grants, meter, feature, now)
        if usable and cost > 0:
            usable[0].left += cost
            usable[0].unflushed -= cost

    def balance(self, grants: Sequence[CreditGrant], now: float) -> int:
        """What is left of the usable grants (1/1000 minor units), as this replica knows it.

        Read-only (safe from the usage listener's lookup thread): a grant not seen yet counts
        its amount less the store's consumed.
        """
        total = 0
        for g in grants:
            if g.usable(now):
                ctr = self._grants.get(g.id)
                total += (
                    ctr.remaining()
                    if ctr is not None
                    else max(0, g.amount * MILLI - self._seed(g.id))
                )
        return total

    def customer_ids(self) -> list[str]:
        """Customers this replica holds grant counters for."""
        return sorted({c.customer for c in list(self._grants.values())})

    # --- background: flush, idle leases, upkeep --------------------------------------------

    async def start(self) -> None:
        """Start the flush loop."""
        self._loop = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop, give every lease back, flush what was spent."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush(return_all=True)
        await self.counters.close()
        if self._on_stop is not None:
            await self._on_stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.counters.tick()
                await self.flush()
            except Exception:  # the loop must survive anything; the next round retries
                log.error("credits.flush_failed", exc=True)

    async def flush(self, *, return_all: bool = False) -> None:
        """Give back idle leases, add debts to the totals, and record spend in the store."""
        now = self._clock()
        back = [
            (c, -c.left)
            for c in self._grants.values()
            if c.left > 0
            and c.refill is None
            and (return_all or now - c.last_spend >= self._idle_return_s)
        ]
        for ctr, delta in back:  # out of reach of the Check before the await
            ctr.left += delta
            ctr.last_grant = 0
        debts, self._debts = self._debts, {}
        moves = back + list(debts.items())
        if moves and not await self.counters.add(moves):
            for ctr, delta in back:
                ctr.left -= delta
            for ctr, units in debts.items():
                self._debts[ctr] = self._debts.get(ctr, 0) + units
        await self._flush_store()

    async def _flush_store(self) -> None:
        dirty = [c for c in self._grants.values() if c.unflushed]
        if not dirty or self._flush_to_store is None:
            return
        batch = [(c, c.unflushed) for c in dirty]
        try:
            await asyncio.wait_for(self._flush_to_store([(c.grant_id, u) for c, u in batch]), 5.0)
        except Exception as e:  # the store is down: the spend stays here for the next round
            FLUSH_ERRORS.inc()
            log.warning("credits.store_flush_failed", error=type(e).__name__, grants=len(batch))
            return
        for ctr, units in batch:
            ctr.unflushed -= units
