"""The distributed limiter: quota units leased in blocks from Redis, spent locally.

Each replica takes a lease (a block of units) for one (customer, meter, period) with one atomic
Lua script (:data:`tollhouse.quota.redis_io.LEASE_LUA`), which never grants past the quota when
``overage: deny``. Requests spend the local lease without touching Redis; when it runs below half
of the last grant, the next lease is fetched in the background. A request waits on Redis (at most
``timeout_s``) only when its lease is empty: the customer's first request on this replica, or a
lease drained faster than its refill.

Bounds (over- and under-admission across replicas, rate-limit shares, Redis outages) are
stated and argued in ``docs/quota.md``; the tests in ``tests/unit/test_quota_redis.py`` check them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from tollhouse.logs import get_logger
from tollhouse.periods import period_for, roll
from tollhouse.quota import metrics
from tollhouse.quota.limiter import Admission, Headers, Limits, Ticket, claim_release
from tollhouse.quota.machinery import (
    GaugeBoard,
    RateBuckets,
    allowed,
    denied,
    format_headers,
    quota_items,
    standing_headers,
)
from tollhouse.quota.redis_io import RETAIN_S, RedisIO, counter_key
from tollhouse.quota.redis_state import Counter, CustomerState, share

__all__ = ["RedisLeaseLimiter"]

log = get_logger(__name__)


class RedisLeaseLimiter:
    """Quotas shared by all replicas through Redis leases; rate limits split per replica."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float],
        instance: str,
        lease_size: int = 1000,
        timeout_s: float = 0.05,
        heartbeat_s: float = 1.0,
        recheck_s: float = 1.0,
        backoff_s: float = 1.0,
    ) -> None:
        """``backoff_s``: after a failed Redis call, how long no call is tried (the circuit)."""
        self._clock = clock
        self._instance = instance
        self._lease_size = max(1, lease_size)
        self._timeout_s = timeout_s
        self._heartbeat_s = heartbeat_s
        self._recheck_s = recheck_s
        self._io = RedisIO(url, clock=clock, timeout_s=timeout_s, backoff_s=backoff_s)
        self._customers: dict[str, CustomerState] = {}
        self._dirty: set[Counter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._gauges = GaugeBoard()
        self._offset = 0.0  # Redis TIME minus our clock, learned when a lease is refused
        self._lost: list[tuple[Counter, str, int]] = []  # (counter, receipt, attempts)
        self._seq = 0
        self._refills = asyncio.Semaphore(8)  # bounds connections opened by a burst of refills
        self.replicas = 1

    @property
    def redis_calls(self) -> int:
        """Round trips to Redis so far (hot path and background)."""
        return self._io.calls

    async def start(self) -> None:
        """Announce this replica and start the background loop (heartbeat, flush, gauges)."""
        await self._tick()
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop, give back unspent lease units, flush pending usage, close."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        # In-flight leases are awaited, not cancelled: a cancelled reply would strand its units.
        # Each one is bounded by its own Redis timeout.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        now = self._clock() + self._offset
        for c in self._customers.values():
            for ctr in c.counters.values():
                if ctr.left > 0 and now < ctr.end_s:
                    ctr.pending -= ctr.left
                    ctr.left = ctr.quota_left = 0
                    self._dirty.add(ctr)
        await self._flush()
        await self._io.leave(self._instance)
        await self._io.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._tick()
            except Exception:  # the loop must survive anything; the next tick retries
                log.error("quota.tick_failed", exc=True)

    async def _tick(self) -> None:
        n = await self._io.heartbeat(self._instance, max(5.0, 3 * self._heartbeat_s))
        if n is not None:
            self.replicas = max(1, n)
            await self._reclaim()
            await self._flush()
        now = self._clock() + self._offset
        if self._gauges.due(now):
            self._gauges.publish(
                (c.plan, m, ctr.used(), q)
                for c in self._customers.values()
                if c.period.contains(now)
                for m, q in c.quotas.items()
                if (ctr := c.counters.get(m)) is not None
            )

    async def _reclaim(self) -> None:
        """Give back units of leases whose reply was lost (they were granted but never seen)."""
        lost, self._lost = self._lost, []
        res = await self._io.reclaim([r for _, r, _ in lost])
        for (ctr, receipt, tries), units in zip(lost, res or [0] * len(lost), strict=True):
            if units > 0:
                ctr.pending -= units
                self._dirty.add(ctr)
            elif tries < 3:  # the command may still be queued in a Redis that just came back
                self._lost.append((ctr, receipt, tries + (res is not None)))

    async def _flush(self) -> None:
        """Add pending units (and re-read touched counters) in one round trip."""
        batch = [(ctr, ctr.pending) for ctr in self._dirty]
        self._dirty = set()
        res = await self._io.add([(c.key, d, c.end_s + RETAIN_S, c.total or 0) for c, d in batch])
        if res is None:
            self._dirty.update(c for c, _ in batch)
            return
        for (ctr, delta), total in zip(batch, res, strict=True):
            ctr.pending -= delta
            ctr.total = total
            ctr.budget, ctr.degraded_used = None, 0

    def _customer(self, customer: str, limits: Limits, now: float) -> CustomerState:
        c = self._customers.get(customer)
        if c is None:
            c = CustomerState(period_for(now, limits.anchor), limits.anchor)
            self._customers[customer] = c
        elif (moved := roll(c.period, c.anchor, limits.anchor, now)) is not None:
            c.period, c.anchor = moved[0], limits.anchor
            if moved[1]:
                c.counters = {}
        c.plan, c.quotas = limits.plan, limits.quotas
        return c

    def _counter(self, c: CustomerState, customer: str, meter: str, request_meter: bool) -> Counter:
        ctr = c.counters.get(meter)
        if ctr is None:
            ctr = Counter(counter_key(customer, meter, c.period.key), meter, c.period)
            c.counters[meter] = ctr
            if not request_meter:
                self._dirty.add(ctr)  # the next tick reads its cluster-wide total
        return ctr

    async def admit(
        self, customer: str, meters: Sequence[str], limits: Limits, now_s: float
    ) -> Admission:
        """Decide one request; awaits Redis (bounded by ``timeout_s``) only on an empty lease."""
        now = now_s + self._offset
        c = self._customer(customer, limits, now)
        ps, pm = share(limits.per_second, self.replicas), share(limits.per_minute, self.replicas)
        c.rate.refill(ps, pm, now)
        hit = c.rate.blocked(ps, pm)
        if hit is not None:
            return denied("rate_limited", hit[0], hit[1], self._headers(c, meters, limits, now))
        # Until every lease has units, Redis says none are left, or the deadline: in a burst, the
        # units one refill brings may go to other requests first, so a request may lease again.
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        started = self._clock()
        while True:
            empty = [
                ctr
                for m in meters
                if m in limits.quotas and m in limits.request_meters
                if self._spendable(ctr := self._counter(c, customer, m, True), limits.quotas[m])
                <= 0
            ]
            if not empty or all(
                c.state == "exhausted" and c.checked_at >= started for c in empty
            ):  # Redis said no units are left
                break
            if not await self._obtain(empty, limits, now, deadline):
                break
            if any(ctr.state == "skew" for ctr in empty):  # Redis TIME put us in another period
                now = now_s + self._offset
                c = self._customer(customer, limits, now)
        return self._consume(c, customer, meters, limits, now)

    def _spendable(self, ctr: Counter, quota: int) -> int:
        """Units left in the lease; a lease taken under a larger quota is given back first."""
        if ctr.left > 0 and quota < ctr.quota_seen:  # downgrade: re-lease under the new quota
            ctr.pending -= ctr.left
            ctr.left = ctr.quota_left = 0
            ctr.quota_seen = quota
            self._dirty.add(ctr)
        return ctr.left

    async def _obtain(
        self, empty: list[Counter], limits: Limits, now: float, deadline: float
    ) -> bool:
        """Fetch leases for empty counters; False when there is nothing worth waiting for."""
        waits: list[asyncio.Task[None]] = []
        for ctr in empty:
            if not self._io.available():
                ctr.state = "error"
                continue
            recent = self._clock() - ctr.checked_at < self._recheck_s
            if ctr.state == "exhausted" and recent and limits.quotas[ctr.meter] <= ctr.quota_seen:
                continue
            waits.append(ctr.refill or self._start_refill(ctr, limits, now))
        if not waits:
            return False
        try:
            left_s = deadline - asyncio.get_running_loop().time()
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*waits)), max(0.0, left_s))
        except TimeoutError:
            for ctr in empty:
                if ctr.left <= 0:
                    ctr.state = "error"
            return False
        return True

    def _start_refill(self, ctr: Counter, limits: Limits, now: float) -> asyncio.Task[None]:
        task = asyncio.create_task(self._refill(ctr, limits, now))
        ctr.refill = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _want(self, ctr: Counter, quota: int, overage: str) -> int:
        if overage == "allow":
            return self._lease_size
        room = quota - (ctr.total or 0)
        return max(1, min(self._lease_size, room // (2 * self.replicas)))

    async def _refill(self, ctr: Counter, limits: Limits, now: float) -> None:
        """One lease round trip; updates the counter in place."""
        try:
            quota = limits.quotas.get(ctr.meter, 0)
            want = self._want(ctr, quota, limits.overage)
            self._seq += 1
            receipt = f"tollhouse:quota:receipt:{self._instance}:{self._seq}"
            async with self._refills:
                res = await self._io.lease(
                    ctr.key,
                    receipt,
                    quota,
                    want,
                    ctr.start_s,
                    ctr.end_s,
                    limits.overage,
                    ctr.total or 0,
                )
            if res is None:
                self._lost.append((ctr, receipt, 0))
                ctr.state = "error"
                metrics.LEASE_REFILLS.labels("error").inc()
                return
            grant, total, in_quota, redis_now = res
            if grant < 0:  # Redis TIME says this period is not current: adopt Redis's clock
                self._offset += redis_now - now
                log.warning("quota.clock_skew", offset_s=round(self._offset, 3))
                ctr.state = "skew"
                return
            ctr.left += grant
            ctr.last_grant = grant
            ctr.quota_left += in_quota
            ctr.total, ctr.quota_seen, ctr.checked_at = total, quota, self._clock()
            ctr.state = "ok" if grant > 0 else "exhausted"
            outcome = "granted" if grant == want else "partial" if grant else "exhausted"
            metrics.LEASE_REFILLS.labels(outcome).inc()
            metrics.LEASE_UNITS.inc(grant)
        finally:
            ctr.refill = None

    def _consume(
        self, c: CustomerState, customer: str, meters: Sequence[str], limits: Limits, now: float
    ) -> Admission:
        """Decide from local state, then spend (no await between check and spend)."""
        plan: list[tuple[Counter, int]] = []
        over = degraded = False
        for m in meters:
            quota = limits.quotas.get(m)
            if quota is None:
                continue
            ctr = self._counter(c, customer, m, m in limits.request_meters)
            if m not in limits.request_meters:
                self._dirty.add(ctr)
                if ctr.used() < quota:
                    continue
                kind = -1
            elif ctr.left > 0:
                kind = 0 if ctr.quota_left > 0 else 1
            elif ctr.state in ("error", "skew") or not self._io.available():
                if limits.on_counter_error == "fail_closed":
                    return denied(
                        "counters_unavailable",
                        f"{m}/period",
                        1,
                        self._headers(c, meters, limits, now),
                    )
                degraded = True
                kind = 2 if self._degraded_room(ctr, quota) > 0 else -1
            else:
                kind = -1
            if kind == -1:
                if limits.overage == "deny":
                    retry = int(c.period.end_s - now + 0.999999)
                    return denied(
                        "quota_exceeded",
                        f"{m}/period",
                        retry,
                        self._headers(c, meters, limits, now),
                        degraded=degraded,
                    )
                kind = 2 if m in limits.request_meters else -1
            over = over or kind == 1 or (kind in (-1, 2) and ctr.used() >= quota)
            plan.append((ctr, kind))
        return self._spend(c, customer, meters, limits, now, plan, over, degraded)

    def _degraded_room(self, ctr: Counter, quota: int) -> int:
        if ctr.budget is None:
            # Our own lease units are spent separately, so they count as taken here.
            known = quota - (ctr.total or 0) - ctr.pending
            ctr.budget = max(0, known) // self.replicas
        return ctr.budget - ctr.degraded_used

    def _spend(
        self,
        c: CustomerState,
        customer: str,
        meters: Sequence[str],
        limits: Limits,
        now: float,
        plan: list[tuple[Counter, int]],
        over: bool,
        degraded: bool,
    ) -> Admission:
        ps, pm = share(limits.per_second, self.replicas), share(limits.per_minute, self.replicas)
        c.rate.take(ps, pm)
        units: list[tuple[str, int]] = []
        for ctr, kind in plan:
            if kind in (0, 1):
                ctr.left -= 1
                if kind == 0:
                    ctr.quota_left -= 1
                if ctr.refill is None and ctr.left <= ctr.last_grant // 2 and self._io.available():
                    self._start_refill(ctr, limits, now)
            elif kind == 2:
                ctr.pending += 1
                ctr.degraded_used += 1
                self._dirty.add(ctr)
            else:
                continue
            units.append((ctr.meter, kind))
        ticket = Ticket(customer, c.period.key, tuple(units), ps is not None, pm is not None)
        headers = self._headers(c, meters, limits, now)
        return allowed(headers, ticket=ticket, overage=over, degraded=degraded)

    def _headers(
        self, c: CustomerState, meters: Sequence[str], limits: Limits, now: float
    ) -> Headers:
        def used(m: str) -> int:
            ctr = c.counters.get(m)
            return 0 if ctr is None else ctr.used()

        items = quota_items(meters, limits, used, c.period, now)
        n = self.replicas
        items += c.rate.items(share(limits.per_second, n), share(limits.per_minute, n))
        return format_headers(items)

    def release(self, admission: Admission) -> None:
        """Give back the units and rate tokens of ``admission`` (once; same period only)."""
        claimed = claim_release(admission, self._customers)
        if claimed is None:
            return
        t, c = claimed
        for meter, kind in t.units:
            ctr = c.counters.get(meter)
            if ctr is None:
                continue
            if kind in (0, 1):
                ctr.left += 1
                ctr.quota_left += 1 if kind == 0 else 0
            else:
                ctr.pending -= 1
                ctr.degraded_used = max(0, ctr.degraded_used - 1)
                self._dirty.add(ctr)

    def add_usage(
        self, customer: str, meter: str, units: int, limits: Limits, now_s: float
    ) -> None:
        """Count post-hoc units; added in Redis by the next background tick."""
        if units <= 0:
            return
        c = self._customer(customer, limits, now_s + self._offset)
        ctr = self._counter(c, customer, meter, meter in limits.request_meters)
        ctr.pending += units
        self._dirty.add(ctr)

    def refund(self, customer: str, meters: Sequence[str], limits: Limits, at_s: float) -> int:
        """Give back a never-served request's units in Redis (next tick), if its period is on."""
        c = self._customer(customer, limits, self._clock() + self._offset)
        if not c.period.contains(at_s + self._offset):
            return 0
        n = 0
        for m in meters:
            if m in limits.quotas and m in limits.request_meters:
                ctr = self._counter(c, customer, m, True)
                ctr.pending -= 1
                self._dirty.add(ctr)
                n += 1
        return n

    def customer_ids(self) -> list[str]:
        """The customers whose counters this replica holds now (for alert evaluation)."""
        return list(self._customers)

    def standing(self, customer: str, limits: Limits, now_s: float) -> Headers:
        """RateLimit headers of every quota and this replica's share of each rate limit."""
        used = self.snapshot(customer, limits, now_s) if limits.quotas else {}
        c = self._customers.get(customer)
        period = c.period if c is not None else period_for(now_s, limits.anchor)
        rate = c.rate if c is not None else RateBuckets()
        n = self.replicas
        shares = (share(limits.per_second, n), share(limits.per_minute, n))
        return standing_headers(limits, used, period, rate, shares, now_s)

    def refresh_gauges(self, now_s: float) -> None:
        """Nothing to do: the background tick refreshes the gauges once a second."""

    def snapshot(self, customer: str, limits: Limits, now_s: float) -> dict[str, tuple[int, int]]:
        """Meter -> (used, limit); used counts other replicas' unspent leases as used."""
        c = self._customer(customer, limits, now_s + self._offset)
        out: dict[str, tuple[int, int]] = {}
        for m, q in limits.quotas.items():
            ctr = self._counter(c, customer, m, False)
            self._dirty.add(ctr)
            out[m] = (max(0, ctr.used()), q)
        return out
