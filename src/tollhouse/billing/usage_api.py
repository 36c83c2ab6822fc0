"""``GET /v1/usage``: a customer's open period, priced so far (aiohttp handler factory).

Mounted by the lead on a small HTTP listener routed through Envoy, so ext_authz has authenticated
the caller and set ``x-tollhouse-customer`` upstream (always overwritten: trusted here). A caller
only ever sees the customer of that header.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from tollhouse.billing.usage import MeterTotals, UsageReport, current_usage
from tollhouse.config import Config
from tollhouse.logs import get_logger

__all__ = ["CUSTOMER_HEADER", "UsageLookup", "add_usage_route", "meter_totals",
           "meter_usage_lookup", "usage_handler"]

CUSTOMER_HEADER = "x-tollhouse-customer"
UsageLookup = Callable[[str], UsageReport | None]
"""``customer -> report`` (``None``: unknown customer); blocking, run in a thread."""
Handler = Callable[[web.Request], Awaitable[web.Response]]

log = get_logger(__name__)


def _problem(status: int, code: str, title: str) -> web.Response:
    body = {"type": f"https://tollhouse.dev/problems/{code}", "title": title, "status": status,
            "code": code}
    return web.Response(status=status, text=json.dumps(body),
                        content_type="application/problem+json")


def usage_handler(lookup: UsageLookup, *, timeout_s: float = 5.0) -> Handler:
    """Return the ``GET /v1/usage`` handler; ``lookup`` runs in a thread with a timeout."""

    async def handle(request: web.Request) -> web.Response:
        customer = request.headers.get(CUSTOMER_HEADER, "").strip()
        if not customer:
            return _problem(401, "unauthenticated", "No authenticated customer")
        try:
            report = await asyncio.wait_for(asyncio.to_thread(lookup, customer), timeout_s)
        except TimeoutError:
            log.warning("usage.timeout", customer=customer)
            return _problem(503, "usage_unavailable", "Usage is temporarily unavailable")
        if report is None:
            return _problem(404, "unknown_customer", "No subscription for this customer")
        return web.json_response(report.to_json(), headers={"cache-control": "no-store"})

    return handle


def add_usage_route(app: web.Application, lookup: UsageLookup, *, timeout_s: float = 5.0) -> None:
    """Mount ``GET /v1/usage`` on ``app``."""
    app.router.add_get("/v1/usage", usage_handler(lookup, timeout_s=timeout_s))


def meter_usage_lookup(cfg: Config, clock: Callable[[], float],
                       totals: MeterTotals | None = None) -> UsageLookup:
    """Wire :func:`current_usage` to the configured meter (SQLite) or else the ledger.

    With a Redis meter the ledger is the source: as fresh as the last billing consume.
    """
    if totals is None:
        totals = meter_totals(cfg)
    source = totals

    def lookup(customer: str) -> UsageReport | None:
        return current_usage(cfg, customer, totals=source, clock=clock)

    return lookup


def meter_totals(cfg: Config) -> MeterTotals:
    """Usage totals per meter from the SQLite meter, or (Redis meter) from the ledger."""
    from tollhouse.billing.consume import SqliteMeterTotals
    from tollhouse.billing.ledger import open_ledger

    if cfg.metering.meter.startswith("sqlite:///"):
        return SqliteMeterTotals(cfg.metering.meter)

    def from_ledger(customer: str, start_ms: int, end_ms: int) -> dict[str, int]:
        ledger = open_ledger(cfg.billing.ledger)
        try:
            return {m: u for m, (u, _) in ledger.meter_totals(customer, start_ms, end_ms).items()}
        finally:
            ledger.close()

    return from_ledger
