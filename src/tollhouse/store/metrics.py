"""Prometheus metrics of the entitlement store replica (default registry)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge

__all__ = [
    "STORE_CHANGES_APPLIED",
    "STORE_CUSTOMERS",
    "STORE_FULL_LOAD_SECONDS",
    "STORE_HEALTHY",
    "STORE_KEYS",
    "STORE_LAST_SYNC",
    "STORE_SYNC_ERRORS",
    "STORE_VERSION",
    "export_store_healthy",
]

# Not registered at import: a process without an entitlement store must not report it unhealthy.
# ``Directory`` registers it (once per process) when a store is configured.
STORE_HEALTHY = Gauge(
    "tollhouse_store_healthy",
    "1 while the store answers, 0 while serving a stale copy",
    registry=None,
)
_exported: list[bool] = []
STORE_VERSION = Gauge("tollhouse_store_version", "Change version of the in-memory entitlements")
STORE_LAST_SYNC = Gauge(
    "tollhouse_store_last_sync_timestamp_seconds", "When the replica last reached the store"
)
STORE_CUSTOMERS = Gauge("tollhouse_store_customers", "Customers held in memory")
STORE_KEYS = Gauge("tollhouse_store_api_keys", "Active (unrevoked) API keys held in memory")
STORE_SYNC_ERRORS = Counter(
    "tollhouse_store_sync_errors_total", "Failed attempts to reach the entitlement store"
)
STORE_CHANGES_APPLIED = Counter(
    "tollhouse_store_changes_applied_total", "Customers and keys reloaded incrementally"
)
STORE_FULL_LOAD_SECONDS = Gauge(
    "tollhouse_store_full_load_seconds", "Duration of the last full load of the entitlement set"
)


def export_store_healthy() -> None:
    """Export ``tollhouse_store_healthy`` on /metrics from now on (idempotent)."""
    if not _exported:
        REGISTRY.register(STORE_HEALTHY)
        _exported.append(True)
