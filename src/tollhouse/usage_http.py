"""The customer-facing usage listener: ``GET /v1/usage``, routed through Envoy and ext_authz.

Envoy's ext_authz has authenticated the caller and overwritten ``x-tollhouse-customer``; the
handler (billing's code, the same pricing as the invoice) shows that customer's data only.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tollhouse.billing.usage import UsageReport
from tollhouse.billing.usage_api import add_usage_route, meter_usage_lookup

__all__ = ["build_usage_app"]


def build_usage_app(app: Any) -> web.Application:
    """An aiohttp app serving ``/v1/usage`` from the configured meter, on the current config."""

    def lookup(customer: str) -> UsageReport | None:
        return meter_usage_lookup(app.cfg, app.clock)(customer)

    web_app = web.Application()
    add_usage_route(web_app, lookup)
    return web_app
