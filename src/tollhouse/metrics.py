"""Process-wide metrics of the serving core (other packages define their own, same registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "AUTHZ_HTTP_CONNECTIONS",
    "AUTHZ_HTTP_REFUSED",
    "CHECKS",
    "CHECK_LATENCY",
    "CONFIG_REJECTED",
    "CONFIG_RELOADS",
    "CONFIG_RESTART_NEEDED",
    "CONFIG_VERSION_INFO",
    "READY",
    "SPOOL_WRITABLE",
    "set_config_version",
]

CHECKS = Counter(
    "tollhouse_checks_total", "ext_authz Checks by result and reason code", ["result", "code"]
)
CHECK_LATENCY = Histogram(
    "tollhouse_check_duration_seconds",
    "Time to decide one Check, inside tollhouse",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
CONFIG_RELOADS = Counter("tollhouse_config_reloads_total", "Config reloads by result", ["result"])
CONFIG_REJECTED = Counter(
    "tollhouse_config_reload_rejected_total",
    "Reloads refused (the old config kept), by reason: invalid, plan_in_use, error",
    ["reason"],
)
CONFIG_RESTART_NEEDED = Gauge(
    "tollhouse_config_restart_needed",
    "1 while the file changes a key read only at start (the running value stays)",
    ["field"],
)
CONFIG_VERSION_INFO = Gauge(
    "tollhouse_config_info",
    "The config version being served (one series: the current one)",
    ["version"],
)
READY = Gauge(
    "tollhouse_ready", "1 when config, keys and entitlements are loaded and the spool can write"
)
SPOOL_WRITABLE = Gauge(
    "tollhouse_spool_writable", "1 while the metering spool's fact log can write (metering on)"
)
AUTHZ_HTTP_CONNECTIONS = Gauge(
    "tollhouse_authz_http_connections", "Open connections of the HTTP ext_authz listener"
)
AUTHZ_HTTP_REFUSED = Counter(
    "tollhouse_authz_http_refused_total",
    "HTTP ext_authz requests or connections refused before a Check, by reason",
    ["reason"],
)


def set_config_version(version: str) -> None:
    """Export ``version`` as the only ``tollhouse_config_info`` series (earlier ones removed)."""
    CONFIG_VERSION_INFO.clear()
    CONFIG_VERSION_INFO.labels(version).set(1)
