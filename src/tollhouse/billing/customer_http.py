"""Customer-facing HTML and invoice downloads on the usage listener (aiohttp).

``GET /v1/invoices/{number}.{html|csv|json}``: an issued invoice of the authenticated customer
(``x-tollhouse-customer``, set by ext_authz), re-rendered from the stored document. Another
customer's invoice answers exactly like one that does not exist: 404 ``not_found``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from tollhouse.billing.customer_invoices import invoice_document
from tollhouse.billing.render import render_csv, render_json
from tollhouse.billing.render_html import render_html
from tollhouse.billing.usage_page import content_security_policy
from tollhouse.logs import get_logger
from tollhouse.problems import problem_response

__all__ = ["add_invoice_route", "html_response", "invoice_handler", "wants_html"]

log = get_logger(__name__)
INVOICE_LOOKUP_FAILED = Counter(
    "tollhouse_customer_invoice_failures_total",
    "GET /v1/invoices answers 503 because the ledger could not be read",
)
_FILE = re.compile(r"^(?P<number>[A-Za-z0-9][A-Za-z0-9_.\-]{0,200})\.(?P<ext>html|csv|json)$")
_TYPES = {"html": "text/html", "csv": "text/csv", "json": "application/json"}
_RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "html": render_html,
    "csv": render_csv,
    "json": render_json,
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _quality(part: str) -> tuple[str, float]:
    media, *params = (p.strip() for p in part.split(";"))
    q = 1.0
    for p in params:
        if p.lower().startswith("q="):
            try:
                q = float(p[2:])
            except ValueError:
                q = 0.0
    return media.lower(), q


def wants_html(accept: str) -> bool:
    """True when ``Accept`` prefers ``text/html`` to JSON (a browser); JSON otherwise."""
    prefs = dict(_quality(p) for p in accept.split(",") if p.strip())
    html = max(prefs.get("text/html", 0.0), prefs.get("application/xhtml+xml", 0.0))
    json_q = max(prefs.get("application/json", 0.0), prefs.get("*/*", 0.0) if html == 0 else 0.0)
    return html > 0 and html >= json_q


def html_response(text: str) -> web.Response:
    """An HTML page with a strict CSP (its inline styles by hash) and no caching."""
    return web.Response(
        text=text,
        content_type="text/html",
        charset="utf-8",
        headers={
            "content-security-policy": content_security_policy(text),
            "cache-control": "no-store",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "vary": "Accept",
        },
    )


def _not_found() -> web.Response:
    return problem_response(404, "not_found", "Not found", "no such invoice")


def invoice_handler(ledger_url: str, customer_header: str, *, timeout_s: float = 5.0) -> Handler:
    """Return the ``GET /v1/invoices/{file}`` handler over the ledger at ``ledger_url``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        customer = request.headers.get(customer_header, "").strip()
        if not customer:
            return problem_response(401, "unauthenticated", "No authenticated customer")
        m = _FILE.match(request.match_info.get("file", ""))
        if m is None:
            return _not_found()
        try:
            doc = await asyncio.wait_for(
                asyncio.to_thread(invoice_document, ledger_url, customer, m["number"]), timeout_s
            )
        except Exception as e:  # ledger unreachable (or too slow): say so, never a guess
            INVOICE_LOOKUP_FAILED.inc()
            log.error("usage.invoice_failed", error=type(e).__name__, customer=customer)
            return problem_response(
                503, "usage_unavailable", "Invoices are temporarily unavailable"
            )
        if doc is None:
            return _not_found()
        text = _RENDER[m["ext"]](doc)
        if m["ext"] == "html":
            return html_response(text)
        headers = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
        if m["ext"] == "csv":
            headers["content-disposition"] = f'attachment; filename="{m["number"]}.csv"'
        return web.Response(
            text=text, content_type=_TYPES[m["ext"]], charset="utf-8", headers=headers
        )

    return handle


def add_invoice_route(app: web.Application, ledger_url: str, customer_header: str) -> None:
    """Mount ``GET /v1/invoices/{number}.{html|csv|json}`` on ``app``."""
    app.router.add_get("/v1/invoices/{file}", invoice_handler(ledger_url, customer_header))
