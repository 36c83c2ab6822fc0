"""``GET /v1/usage``: a customer's open period, priced so far (aiohttp handler factory).

Mounted on a small HTTP listener routed through Envoy, so ext_authz has authenticated
the caller and set ``x-tollhouse-customer`` upstream (always overwritten: trusted here). A caller
only ever sees the customer of that header.

What is counted, per meter, is the larger of what the meter holds and what the serving process's
quota counters say (``live``, the counters the Check decides on), so the answer never lags the
quota decision. With a Redis meter, "what the meter holds" is the ledger (what billing consumed)
plus the stream's entries the billing group has not read yet (:class:`RedisMeterTotals`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from tollhouse.billing.customer_http import add_invoice_route, html_response, wants_html
from tollhouse.billing.customer_invoices import list_invoices
from tollhouse.billing.ledger import day_range
from tollhouse.billing.ledger_schema import DAY_MS
from tollhouse.billing.usage import DailyTotals, MeterTotals, UsageReport, current_usage
from tollhouse.billing.usage_page import render_usage_page
from tollhouse.config import Config
from tollhouse.logs import get_logger
from tollhouse.problems import problem_response

__all__ = [
    "CUSTOMER_HEADER",
    "LiveUsed",
    "RedisMeterTotals",
    "UsageLookup",
    "add_usage_route",
    "daily_of",
    "meter_totals",
    "meter_usage_lookup",
    "usage_handler",
    "with_invoices",
    "with_live",
]

CUSTOMER_HEADER = "x-tollhouse-customer"
UsageLookup = Callable[[str, Mapping[str, int]], UsageReport | None]
"""``(customer, live units per meter) -> report`` (``None``: unknown); blocking, run in a thread."""
LiveUsed = Callable[[str], Mapping[str, int]]
"""``customer -> units used per meter`` from the quota counters; called on the event loop."""
Handler = Callable[[web.Request], Awaitable[web.Response]]

log = get_logger(__name__)
LOOKUP_FAILED = Counter(
    "tollhouse_usage_lookup_failures_total",
    "GET /v1/usage answers 503 because the meter, ledger or Redis could not be read",
)
TAIL_SKIPPED = Counter(
    "tollhouse_usage_tail_skipped_total",
    "Redis meter entries GET /v1/usage could not read (counted by the billing job's dead letters)",
)


def _no_live(_: str) -> Mapping[str, int]:
    return {}


def usage_handler(
    lookup: UsageLookup, *, live: LiveUsed = _no_live, timeout_s: float = 5.0
) -> Handler:
    """Return the ``GET /v1/usage`` handler; ``lookup`` runs in a thread with a timeout."""

    async def handle(request: web.Request) -> web.Response:
        customer = request.headers.get(CUSTOMER_HEADER, "").strip()
        if not customer:
            return problem_response(401, "unauthenticated", "No authenticated customer")
        try:
            counted = dict(live(customer))  # on the loop: the counters are the Check's
        except Exception:
            LOOKUP_FAILED.inc()
            log.error("usage.live_failed", exc=True, customer=customer)
            return problem_response(503, "usage_unavailable", "Usage is temporarily unavailable")
        try:
            report = await asyncio.wait_for(asyncio.to_thread(lookup, customer, counted), timeout_s)
        except TimeoutError:
            log.warning("usage.timeout", customer=customer)
            return problem_response(503, "usage_unavailable", "Usage is temporarily unavailable")
        except Exception as e:  # meter, ledger or Redis unreachable: say so, never a guess
            LOOKUP_FAILED.inc()
            log.error("usage.lookup_failed", error=type(e).__name__, customer=customer)
            return problem_response(503, "usage_unavailable", "Usage is temporarily unavailable")
        if report is None:
            return problem_response(404, "unknown_customer", "No subscription for this customer")
        if wants_html(request.headers.get("accept", "")):
            return html_response(render_usage_page(report))
        return web.json_response(
            report.to_json(), headers={"cache-control": "no-store", "vary": "Accept"}
        )

    return handle


def add_usage_route(
    app: web.Application,
    lookup: UsageLookup,
    *,
    live: LiveUsed = _no_live,
    timeout_s: float = 5.0,
    ledger_url: str | None = None,
) -> None:
    """Mount ``GET /v1/usage`` on ``app`` (and, with ``ledger_url``, ``GET /v1/invoices/...``)."""
    app.router.add_get("/v1/usage", usage_handler(lookup, live=live, timeout_s=timeout_s))
    if ledger_url is not None:
        add_invoice_route(app, ledger_url, CUSTOMER_HEADER)


def with_live(totals: MeterTotals, live: Mapping[str, int]) -> MeterTotals:
    """``totals`` of the open period, each meter raised to its live counter when that is ahead.

    The meter lags the Check (access log, join, forwarder); the quota counters do not. The
    counters count admissions and the meter billable units, so the larger of the two is what
    the customer is known to have used.
    """
    if not live:
        return totals

    def merged(customer: str, start_ms: int, end_ms: int) -> Mapping[str, int]:
        out = dict(totals(customer, start_ms, end_ms))
        for meter, units in live.items():
            out[meter] = max(out.get(meter, 0), units)
        return out

    return merged


def meter_usage_lookup(
    cfg: Config, clock: Callable[[], float], totals: MeterTotals | None = None
) -> UsageLookup:
    """Wire :func:`current_usage` to the configured meter (:func:`meter_totals`)."""
    source = meter_totals(cfg) if totals is None else totals

    def lookup(customer: str, live: Mapping[str, int]) -> UsageReport | None:
        report = current_usage(
            cfg, customer, totals=with_live(source, live), clock=clock, daily=daily_of(source)
        )
        return with_invoices(cfg, report)

    return lookup


def daily_of(totals: MeterTotals) -> DailyTotals | None:
    """The per-day totals of a meter source that has them (the chart), else ``None``."""
    daily = getattr(totals, "daily", None)
    return daily if callable(daily) else None


def with_invoices(cfg: Config, report: UsageReport | None) -> UsageReport | None:
    """``report`` with the customer's issued invoices from the ledger (blocking)."""
    if report is None:
        return None
    return dataclasses.replace(report, invoices=list_invoices(cfg.billing.ledger, report.customer))


def meter_totals(cfg: Config) -> MeterTotals:
    """Usage totals per meter from the SQLite meter, or (Redis meter) ledger + stream tail."""
    from tollhouse.billing.consume import SqliteMeterTotals

    if cfg.metering.meter.kind == "sqlite":
        return SqliteMeterTotals(cfg.metering.meter)
    return RedisMeterTotals(cfg)


class RedisMeterTotals:
    """Billable units with a Redis meter: the ledger plus what the billing group has not read.

    The tail (entries after the group's last-delivered id) is read incrementally into per-day
    sums, and read again from the new id whenever billing moves it. The ledger is read before
    the group's position, so an entry is never in both; an entry the billing job is reading at
    that moment is briefly in neither, and a record the sink appended twice (a retried write)
    counts twice here until the billing job, which keeps each usage id once, consumes it.
    """

    def __init__(self, cfg: Config, *, page: int = 1000, max_pages: int = 200) -> None:
        self._ledger_url = cfg.billing.ledger
        self._meter_url = cfg.metering.meter.url
        self._group = cfg.billing.consumer_group
        self._page, self._max_pages = page, max_pages
        self._lock = threading.Lock()
        self._client: Any = None
        self._floor: str | None = None
        self._cursor = "0-0"
        self._days: dict[str, dict[tuple[str, int], int]] = {}

    def __call__(self, customer: str, start_ms: int, end_ms: int) -> dict[str, int]:
        """``{meter: units}`` admitted in ``[start_ms, end_ms)`` (blocking: use a thread)."""
        out = self._from_ledger(customer, start_ms, end_ms)
        first, last = day_range(start_ms, end_ms)
        with self._lock:
            self._catch_up()
            for (meter, day), units in self._days.get(customer, {}).items():
                if first <= day < last:
                    out[meter] = out.get(meter, 0) + units
        return out

    def daily(self, customer: str, start_ms: int, end_ms: int) -> list[tuple[int, str, int]]:
        """``[(UTC day number, meter, units)]``: the ledger's days plus the tail's (blocking)."""
        from tollhouse.billing.ledger import open_ledger

        first, last = day_range(start_ms, end_ms)
        ledger = open_ledger(self._ledger_url)
        try:
            rows = ledger.daily_totals(customer, start_ms, end_ms, ledger.max_seq())
        finally:
            ledger.close()
        out = [(first + d, m, u) for d, m, u in rows]
        with self._lock:
            self._catch_up()
            out += [
                (day, meter, units)
                for (meter, day), units in self._days.get(customer, {}).items()
                if first <= day < last
            ]
        return out

    def _from_ledger(self, customer: str, start_ms: int, end_ms: int) -> dict[str, int]:
        from tollhouse.billing.ledger import open_ledger

        ledger = open_ledger(self._ledger_url)
        try:
            return {m: u for m, (u, _) in ledger.meter_totals(customer, start_ms, end_ms).items()}
        finally:
            ledger.close()

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self._meter_url, socket_timeout=2, socket_connect_timeout=2
            )
        return self._client

    def _group_floor(self) -> str:
        """The billing group's last-delivered id ("0-0": no group yet, all is unconsumed)."""
        import redis

        from tollhouse.metering.schema import STREAM_KEY

        try:
            groups = self._redis().xinfo_groups(STREAM_KEY)
        except redis.ResponseError:  # no stream yet
            return "0-0"
        for g in groups:
            if _text(g.get("name")) == self._group:
                return _text(g.get("last-delivered-id")) or "0-0"
        return "0-0"

    def _catch_up(self) -> None:
        """Read entries after the cursor (at most ``max_pages`` pages per call)."""
        from tollhouse.metering.schema import STREAM_KEY

        floor = self._group_floor()
        if floor != self._floor:
            self._floor, self._cursor, self._days = floor, floor, {}
        for _ in range(self._max_pages):
            entries = self._redis().xrange(
                STREAM_KEY, min="(" + self._cursor, max="+", count=self._page
            )
            for entry_id, fields in entries:
                self._add(_text(entry_id), fields)
            if len(entries) < self._page:
                return
        log.info("usage.tail_partial", cursor=self._cursor)

    def _add(self, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        from tollhouse.metering.schema import FIELD_RECORD, UsageRecord

        self._cursor = entry_id
        try:
            rec = UsageRecord.FromString(bytes(fields[FIELD_RECORD.encode()]))
        except Exception:
            TAIL_SKIPPED.inc()
            log.warning("usage.tail_bad_entry", entry_id=entry_id)
            return
        if not rec.billable:
            return
        days = self._days.setdefault(rec.customer, {})
        day = rec.admitted_at_ms // DAY_MS
        for meter, units in rec.units.items():
            days[(meter, day)] = days.get((meter, day), 0) + int(units)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v) if v is not None else ""
