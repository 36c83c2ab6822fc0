"""Prometheus metrics of the admin API (default registry)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["ADMIN_REQUESTS"]

ADMIN_REQUESTS = Counter(
    "tollhouse_admin_requests_total", "Admin API requests by route and status", ["route", "status"]
)
