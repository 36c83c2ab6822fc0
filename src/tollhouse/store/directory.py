"""Serve entitlements from memory: load the whole set at start, then apply changes as they come.

SQLite: poll the change version every ``poll_interval_ms``. PostgreSQL: ``LISTEN
tollhouse_changes`` (each write notifies at commit) plus a periodic version check as a safety net.
Lookups (:meth:`Directory.customer`, :meth:`Directory.api_key_customer`) are synchronous dict reads:
the Check path never waits on the store. While the store is unreachable the last snapshot keeps
serving, :attr:`Directory.healthy` is False, and the replica catches up when the store returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection
from datetime import date
from typing import Any, cast

import psycopg

from tollhouse.config import StoreConfig
from tollhouse.logs import get_logger
from tollhouse.store import metrics as m
from tollhouse.store.backend import Backend, StoreUnavailable, pg_conninfo
from tollhouse.store.models import period_start
from tollhouse.store.schema import SchemaError, open_store
from tollhouse.store.service import NOTIFY_CHANNEL
from tollhouse.store.snapshot import Snapshot, load_delta, load_full
from tollhouse.subscriber import NO_UNITS, Status, Subscriber, TopUp, plan_history

__all__ = ["Directory"]

log = get_logger(__name__)
_FAILURES = (StoreUnavailable, psycopg.Error, OSError, TimeoutError)
_STOP_DEADLINE_S = 5.0


class Directory:
    """The in-memory entitlement set of one replica, kept in step with the store.

    ``store``: the config's ``StoreConfig`` (its url and poll interval) or a store URL.
    """

    def __init__(
        self,
        store: StoreConfig | str,
        *,
        poll_interval_ms: int = 500,
        clock: Callable[[], float] = time.time,
        pg_check_interval_s: float = 5.0,
    ) -> None:
        if isinstance(store, StoreConfig):
            poll_interval_ms = store.poll_interval_ms
            store = store.url
        self._url = store
        self._poll_s = poll_interval_ms / 1000
        self._pg_check_s = pg_check_interval_s
        self._clock = clock
        self._snap = Snapshot()
        self._loaded = False
        self._error: str | None = "not loaded yet"
        self._last_sync: float | None = None
        self._backend: Backend | None = None
        self._listen: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready_event = asyncio.Event()
        m.export_store_healthy()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the schema, try the first full load, then keep in step in the background.

        Raises :class:`~tollhouse.store.schema.SchemaError` for a store this code does not know.
        If the store is unreachable, returns not ready and keeps trying.
        """
        try:
            self._backend = await open_store(self._url)
            await self._full_load()
        except SchemaError:
            raise
        except Exception as e:
            self._fail(e)
        self._task = asyncio.create_task(self._run(), name="tollhouse-store-sync")

    async def stop(self) -> None:
        """Stop syncing and close connections."""
        task, self._task = self._task, None
        if task is not None:
            await _cancel(task, _STOP_DEADLINE_S)
        await self._close_listen()
        if self._backend is not None:
            await self._backend.close()
            self._backend = None

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the first full load is done; return :attr:`ready`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready_event.wait(), timeout_s)
        return self.ready

    # --- the read side (synchronous, no I/O) -----------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the whole entitlement set has been loaded."""
        return self._loaded

    @property
    def healthy(self) -> bool:
        """False while the store is unreachable (the last snapshot keeps serving)."""
        return self._loaded and self._error is None

    @property
    def version(self) -> int:
        """Change version of the snapshot in memory."""
        return self._snap.version

    def customer(self, customer_id: str) -> Subscriber | None:
        """Return the customer's subscription now, or None if the store does not know it."""
        snap = self._snap
        rec = snap.customers.get(customer_id)
        if rec is None:
            return None
        changes, status, since, anchor = rec
        now = self._clock()
        plan = changes[0][0]
        for p, eff in changes:
            if eff > now:
                break
            plan = p
        credits = snap.credits
        caps = credits.caps.get(customer_id)
        rows = snap.topups.get(customer_id)
        start = period_start(anchor, now) if caps or rows else None  # only when needed: hot path
        return Subscriber(
            customer_id,
            plan,
            plan_history(changes, anchor),
            anchor,
            cast(Status, status),
            since,
            snap.overrides.get(customer_id, NO_UNITS),
            _topups(rows, start),
            credits.grants.get(customer_id, ()),
            caps.get(start.isoformat()) if caps and start else None,
            credits.recharge.get(customer_id),
            source="store",
        )

    def capped_customers(self) -> list[str]:
        """Customers that have set a spend cap (for any period; ``customer()`` says which now)."""
        return list(self._snap.credits.caps)

    def credit_seed(self, grant_id: str) -> int:
        """1/1000 minor units of a grant spent, as the store knew at load (flushed by replicas)."""
        return self._snap.credits.consumed.get(grant_id, 0)

    async def customers_on(
        self, plans: Collection[str] | None, sample: int = 5
    ) -> dict[str, tuple[int, list[str]]]:
        """Per plan of ``plans`` (None: every plan): customers (not cancelled) on it, a few ids.

        A customer is on the plan in effect now and on every plan of a scheduled change. Reads a
        copy of the snapshot in chunks, yielding to the loop, so a million customers never stall
        the Check path.
        """
        wanted, now = (None if plans is None else set(plans)), self._clock()
        out: dict[str, tuple[int, list[str]]] = {}
        items = list(self._snap.customers.items())
        for i in range(0, len(items), 20_000):
            for cid, (changes, status, _, _) in items[i : i + 20_000]:
                if status == "cancelled":
                    continue
                current = changes[0][0]
                names: set[str] = set()
                for plan, eff in changes:
                    if eff <= now:
                        current = plan
                    else:
                        names.add(plan)
                names.add(current)
                for plan in names if wanted is None else names & wanted:
                    n, ids = out.get(plan, (0, []))
                    out[plan] = (n + 1, [*ids, cid] if len(ids) < sample else ids)
            await asyncio.sleep(0)
        return out

    def api_key_customer(self, sha256_hex: str) -> str | None:
        """Return the customer of an unrevoked key by its SHA-256 hex, else None."""
        if len(sha256_hex) != 64:
            return None
        try:
            digest = bytes.fromhex(sha256_hex)
        except ValueError:
            return None
        return self._snap.keys.get(digest)

    def status_detail(self) -> dict[str, object]:
        """Return the replica's state for ``/readyz`` detail."""
        age = None if self._last_sync is None else round(self._clock() - self._last_sync, 3)
        return {
            "ready": self.ready,
            "healthy": self.healthy,
            "version": self._snap.version,
            "customers": len(self._snap.customers),
            "api_keys": len(self._snap.keys),
            "last_sync_age_s": age,
            "error": self._error,
        }

    # --- the sync side ---------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = min(max(self._poll_s, 0.2), 2.0)
        while True:
            try:
                if self._backend is None:
                    self._backend = await open_store(self._url)
                if not self._loaded:
                    await self._full_load()
                if self._backend.dialect == "postgresql":
                    await self._pg_cycle()
                else:
                    await asyncio.sleep(self._poll_s)
                    await self._sync()
            except SchemaError as e:  # migrated to a newer schema while serving: keep the copy
                self._fail(e)
                await asyncio.sleep(backoff)
            except Exception as e:
                if not isinstance(e, _FAILURES):
                    log.error("store.sync_failed", exc=True, error=type(e).__name__)
                self._fail(e)
                await self._close_listen()
                await asyncio.sleep(backoff)

    async def _pg_cycle(self) -> None:
        if self._listen is None:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # as the inner await completes, and stop() would then wait on a task that runs on.
            async with asyncio.timeout(6):
                fresh: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
                    pg_conninfo(self._url), autocommit=True, connect_timeout=5
                )
            self._listen = fresh
            async with asyncio.timeout(5):
                await fresh.execute(f"LISTEN {NOTIFY_CHANNEL}")
            await self._sync()  # anything committed before LISTEN took effect
        listen: psycopg.AsyncConnection[Any] = self._listen
        async for _ in listen.notifies(timeout=self._pg_check_s, stop_after=1):
            pass
        await self._sync()

    async def _close_listen(self) -> None:
        if self._listen is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_STOP_DEADLINE_S):
                    await self._listen.close()
            self._listen = None

    async def _full_load(self) -> None:
        assert self._backend is not None
        started = time.perf_counter()
        snap = await load_full(self._backend, self._clock())
        self._snap = snap
        elapsed = time.perf_counter() - started
        m.STORE_FULL_LOAD_SECONDS.set(elapsed)
        log.info(
            "store.loaded",
            version=snap.version,
            customers=len(snap.customers),
            api_keys=len(snap.keys),
            seconds=round(elapsed, 3),
        )
        self._loaded = True
        self._ready_event.set()
        self._ok()

    async def _sync(self) -> None:
        assert self._backend is not None
        delta = await load_delta(self._backend, self._snap.version, self._clock())
        if delta is None:
            await self._full_load()
            return
        changed = delta.apply(self._snap)
        if changed:
            m.STORE_CHANGES_APPLIED.inc(changed)
            log.debug("store.applied", version=self._snap.version, entities=changed)
        self._ok()

    def _ok(self) -> None:
        if self._error is not None and self._loaded:
            log.info("store.reachable", version=self._snap.version)
        self._error = None
        self._last_sync = self._clock()
        m.STORE_HEALTHY.set(1)
        m.STORE_LAST_SYNC.set(self._last_sync)
        m.STORE_VERSION.set(self._snap.version)
        m.STORE_CUSTOMERS.set(len(self._snap.customers))
        m.STORE_KEYS.set(len(self._snap.keys))

    def _fail(self, e: BaseException) -> None:
        message = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        if self._error != message:
            log.warning("store.unreachable", error=message, version=self._snap.version)
        self._error = message
        m.STORE_HEALTHY.set(0)
        m.STORE_SYNC_ERRORS.inc()


async def _cancel(task: asyncio.Task[None], deadline_s: float) -> None:
    """Cancel ``task`` and wait for it, cancelling again until it ends or ``deadline_s`` passes.

    A cancel can be lost inside a library's await (see ``_pg_cycle``); asking again is safe.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not task.done() and loop.time() < end:
        task.cancel()
        await asyncio.wait({task}, timeout=min(0.5, max(0.0, end - loop.time())))
    if not task.done():
        log.warning("store.sync_stop_timeout", seconds=deadline_s)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("store.sync_failed_on_stop", error=type(task.exception()).__name__)


def _topups(rows: tuple[tuple[str, str, int], ...] | None, start: date | None) -> tuple[TopUp, ...]:
    """The top-ups of the period that starts on ``start`` (the current one), as values."""
    if not rows or start is None:
        return ()
    key = start.isoformat()
    return tuple(TopUp(start, meter, units) for period, meter, units in rows if period == key)
