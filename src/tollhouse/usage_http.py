"""The customer-facing usage listener: ``GET /v1/usage``, routed through Envoy and ext_authz.

Envoy's ext_authz has authenticated the caller and overwritten ``x-tollhouse-customer``; the
handler (billing's code, the same pricing as the invoice) shows that customer's data only. The
subscription comes from what this replica serves: the entitlement store's in-memory directory
(plan changes, anchor, overrides, top-ups of the current period) or the config file. Units used
are never behind the quota counters the Check decides on (:func:`live_counters`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from aiohttp import web

from tollhouse.billing.pricing import minor_unit
from tollhouse.billing.subscriptions import ConfigSubscriptions
from tollhouse.billing.usage import UsageReport, current_usage
from tollhouse.billing.usage_api import (
    add_usage_route,
    daily_of,
    meter_totals,
    with_invoices,
    with_live,
)
from tollhouse.decision import Deny
from tollhouse.http import problems_middleware
from tollhouse.limits import live_used
from tollhouse.store.credit_models import MILLI
from tollhouse.subscriber import Subscriber

__all__ = [
    "LiveSubscriptions",
    "build_usage_app",
    "live_counters",
    "report_lookup",
    "spend_lookup",
    "with_credit",
]


class LiveSubscriptions:
    """A billing ``SubscriptionSource`` over the serving process's view of customers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def customers(self) -> Iterable[str]:
        """Return the config's customers (the store's are looked up one by one)."""
        return sorted(self.app.cfg.customers)

    def entry(self, customer: str) -> Subscriber | None:
        """The store's in-memory entry for ``customer``, if a store is configured."""
        directory = self.app.directory
        return directory.customer(customer) if directory is not None else None

    def subscription(self, customer: str) -> Subscriber | None:
        """The store's subscriber (with this period's top-ups), else the config's."""
        sub = self.entry(customer)
        return sub if sub is not None else ConfigSubscriptions(self.app.cfg).subscription(customer)


def live_counters(app: Any) -> Callable[[str], Mapping[str, int]]:
    """``customer -> units used per quota meter`` from the running limiter (event loop only)."""

    def live(customer: str) -> Mapping[str, int]:
        limiter, checker = getattr(app, "limiter", None), getattr(app, "checker", None)
        if limiter is None or checker is None:
            return {}
        snap = app.state.catalog
        cust = checker.lookup(snap, customer)
        plan = None if isinstance(cust, Deny) else snap.plan(cust.plan)
        if plan is None:
            return {}
        return live_used(limiter, customer, app.limits.for_customer(snap, cust, plan), app.clock())

    return live


def with_credit(app: Any, ent: Subscriber | None, report: UsageReport | None) -> UsageReport | None:
    """The report with the live credit balance, for a customer with grants or a prepaid plan.

    The balance is this replica's view (``CreditBook.balance``), rounded down to the minor unit.
    """
    credits = getattr(app, "credits", None)
    if report is None or credits is None or ent is None:
        return report
    grants = [g for g in ent.credit_grants if g.currency == report.currency]
    if not grants and report.plan not in app.state.catalog.credit_prices:
        return report
    milli = credits.balance(grants, app.clock())
    balance = (milli // MILLI) * minor_unit(report.currency)
    return replace(report, credit_balance=balance)


def report_lookup(app: Any) -> Callable[[str, Mapping[str, int]], UsageReport | None]:
    """``(customer, live counters) -> UsageReport``, as ``/v1/usage`` shows it (blocking)."""
    subs = LiveSubscriptions(app)
    totals = meter_totals(app.cfg)

    def lookup(customer: str, live: Mapping[str, int]) -> UsageReport | None:
        ent = subs.subscription(customer)  # the store's, else the config's (overrides too)
        overrides = dict(ent.quota_overrides) if ent is not None else None
        report = current_usage(
            app.cfg,
            customer,
            totals=with_live(totals, live),
            clock=app.clock,
            subscriptions=subs,
            quota_overrides=overrides,
            daily=daily_of(totals),
        )
        return with_invoices(app.cfg, with_credit(app, ent, report))

    return lookup


def spend_lookup(app: Any) -> Callable[[str], Awaitable[UsageReport | None]]:
    """The spend-cap evaluator's lookup: live counters on the loop, the report in a thread."""
    built: list[Callable[[str, Mapping[str, int]], UsageReport | None]] = []
    live = live_counters(app)

    async def lookup(customer: str) -> UsageReport | None:
        if not built:
            built.append(report_lookup(app))
        return await asyncio.to_thread(built[0], customer, dict(live(customer)))

    return lookup


def build_usage_app(app: Any) -> web.Application:
    """Return an aiohttp app serving ``/v1/usage`` from the meter, on the current config.

    With a store, also the customer's own spend cap (``/v1/usage/spend-cap``).
    """
    web_app = web.Application(middlewares=[problems_middleware])
    add_usage_route(
        web_app, report_lookup(app), live=live_counters(app), ledger_url=app.cfg.billing.ledger
    )
    store = getattr(app.cfg, "store", None)
    if store is not None and app.directory is not None:
        from tollhouse.spend_cap_http import add_spend_cap_routes
        from tollhouse.store import StoreService, connect_backend

        service = StoreService(connect_backend(store.url), clock=app.clock)
        add_spend_cap_routes(web_app, service, app.directory, getattr(app, "spend_caps", None))

        async def close(_: web.Application) -> None:
            await service.backend.close()

        web_app.on_cleanup.append(close)
    return web_app
