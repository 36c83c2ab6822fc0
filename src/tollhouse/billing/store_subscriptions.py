"""Subscriptions from the entitlement store, plus the config file's static customers.

The billing job is synchronous: :class:`StoreSubscriptions` reads the whole store once (one
``asyncio.run``) into plain :class:`~tollhouse.subscriber.Subscriber` values, then answers from
memory. The store wins where it and the config file name the same customer.

Rules (``docs/billing.md``):

* the plan history is :func:`tollhouse.subscriber.plan_history`'s, the same the Check path's
  directory builds: times truncated to the whole second, the first plan in effect from the
  anchor's midnight UTC when that precedes the first change;
* top-ups belong to the period that starts on their ``period`` date and add included units;
* prepaid credit grants (all of them, voided and expired included) are read in the same pass, so
  the invoices apply them without another store read (:mod:`tollhouse.billing.invoice_credits`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date

from tollhouse.billing.subscriptions import ConfigSubscriptions
from tollhouse.config import Config
from tollhouse.store.backend import Backend
from tollhouse.store.credit_models import CreditGrant, grant_order
from tollhouse.store.credit_service import GRANT_SQL, grant_from_row
from tollhouse.store.models import Customer
from tollhouse.store.schema import open_store
from tollhouse.store.service import StoreService
from tollhouse.subscriber import Subscriber, TopUp, plan_history

__all__ = ["StoreSubscriptions", "load_store_subscriptions", "to_subscriber"]

PAGE = 1000  # the service's largest page
_TOPUPS_SQL = "SELECT customer, period, meter, units FROM topups ORDER BY customer, id"


def to_subscriber(
    c: Customer, topups: Sequence[TopUp] = (), grants: Sequence[CreditGrant] = ()
) -> Subscriber:
    """Turn a store customer (with its top-ups and credit grants) into a plain value."""
    return Subscriber(
        c.id,
        c.plan,
        plan_history(((pc.plan, pc.effective_from) for pc in c.plan_changes), c.anchor),
        c.anchor,
        c.status,
        math.floor(c.status_since),
        c.quota_overrides,
        tuple(topups),
        tuple(sorted(grants, key=grant_order)),
        source="store",
    )


async def _load_topups(backend: Backend) -> dict[str, list[TopUp]]:
    out: dict[str, list[TopUp]] = {}
    async with backend.transaction(readonly=True) as tx:
        async for rows in tx.chunks(_TOPUPS_SQL):
            for customer, period, meter, units in rows:
                out.setdefault(customer, []).append(
                    TopUp(date.fromisoformat(period), meter, int(units))
                )
    return out


async def _load_grants(backend: Backend) -> dict[str, list[CreditGrant]]:
    out: dict[str, list[CreditGrant]] = {}
    async with backend.transaction(readonly=True) as tx:
        async for rows in tx.chunks(f"{GRANT_SQL} ORDER BY customer, id"):
            for r in rows:
                g = grant_from_row(r)
                out.setdefault(g.customer, []).append(g)
    return out


async def load_store_subscriptions(
    backend: Backend, *, clock: Callable[[], float], timeout_s: float = 30.0
) -> dict[str, Subscriber]:
    """Read every customer of the store (pages of 1000, by id) with its top-ups and grants.

    ``timeout_s`` bounds each read (all top-ups; all grants; each page of customers).
    """
    service = StoreService(backend, clock=clock)
    topups = await asyncio.wait_for(_load_topups(backend), timeout_s)
    grants = await asyncio.wait_for(_load_grants(backend), timeout_s)
    out: dict[str, Subscriber] = {}
    after: str | None = None
    while True:
        page = await asyncio.wait_for(service.list_customers(after=after, limit=PAGE), timeout_s)
        for c in page:
            out[c.id] = to_subscriber(c, topups.get(c.id, ()), grants.get(c.id, ()))
        if len(page) < PAGE:
            return out
        after = page[-1].id


async def _load(url: str, clock: Callable[[], float], timeout_s: float) -> dict[str, Subscriber]:
    backend = await asyncio.wait_for(open_store(url), timeout_s)
    try:
        return await load_store_subscriptions(backend, clock=clock, timeout_s=timeout_s)
    finally:
        await backend.close()


class StoreSubscriptions:
    """A :class:`~tollhouse.billing.subscriptions.SubscriptionSource` over the entitlement store.

    Everything is read in the constructor (``SchemaError`` / ``StoreUnavailable`` propagate);
    customers only in the config file are served as :class:`ConfigSubscriptions` serves them.
    Not for use inside a running event loop: call :func:`load_store_subscriptions` there and
    :meth:`from_loaded`.
    """

    def __init__(
        self,
        store_url: str,
        cfg: Config,
        *,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 30.0,
    ) -> None:
        self._config = ConfigSubscriptions(cfg)
        self._cfg_customers = set(cfg.customers)
        self._store: Mapping[str, Subscriber] = asyncio.run(_load(store_url, clock, timeout_s))

    @classmethod
    def from_loaded(cls, loaded: Mapping[str, Subscriber], cfg: Config) -> StoreSubscriptions:
        """Build from subscriptions already read by :func:`load_store_subscriptions`."""
        self = cls.__new__(cls)
        self._config = ConfigSubscriptions(cfg)
        self._cfg_customers = set(cfg.customers)
        self._store = dict(loaded)
        return self

    def customers(self) -> Iterable[str]:
        """Return store and config customers, sorted, each once."""
        return sorted(set(self._store) | self._cfg_customers)

    def subscription(self, customer: str) -> Subscriber | None:
        """Return the store's subscription, else the config's (``default_plan`` included)."""
        sub = self._store.get(customer)
        return sub if sub is not None else self._config.subscription(customer)
