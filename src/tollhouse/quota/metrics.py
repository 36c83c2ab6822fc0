"""Prometheus metrics of the quota package (default registry, ``tollhouse_quota_`` prefix)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "COUNTER_FILE_ERRORS",
    "COUNTER_FILE_WRITES",
    "DEGRADED",
    "DENIALS",
    "LEASE_REFILLS",
    "LEASE_UNITS",
    "QUOTA_REMAINING",
    "QUOTA_USED",
    "REDIS_CALLS",
    "REDIS_ERRORS",
    "REDIS_RESEEDS",
]

QUOTA_USED = Gauge(
    "tollhouse_quota_used_units",
    "Units used in the current period, summed over the customers of a plan seen by this replica",
    ["plan", "meter"],
)
QUOTA_REMAINING = Gauge(
    "tollhouse_quota_remaining_units",
    "Units remaining in the current period, summed over the customers of a plan on this replica",
    ["plan", "meter"],
)
DENIALS = Counter(
    "tollhouse_quota_denials_total",
    "Requests refused by the limiter, by reason (quota_exceeded, rate_limited, "
    "counters_unavailable) and limit",
    ["reason", "limit"],
)
LEASE_REFILLS = Counter(
    "tollhouse_quota_lease_refills_total",
    "Lease requests sent to Redis, by outcome (granted, partial, exhausted, error)",
    ["outcome"],
)
LEASE_UNITS = Counter(
    "tollhouse_quota_lease_units_total", "Quota units granted to this replica by Redis leases"
)
DEGRADED = Counter(
    "tollhouse_quota_degraded_decisions_total",
    "Decisions made without the shared counters (Redis unreachable, on_counter_error: local)",
    ["allowed"],
)
REDIS_CALLS = Counter(
    "tollhouse_quota_redis_calls_total", "Round trips to Redis made by the quota limiter", ["op"]
)
REDIS_ERRORS = Counter(
    "tollhouse_quota_redis_errors_total",
    "Redis calls of the quota limiter that failed or timed out",
    ["op"],
)
COUNTER_FILE_WRITES = Counter(
    "tollhouse_quota_counter_file_writes_total",
    "Commits of the embedded limiter's counter file (counters: memory)",
)
COUNTER_FILE_ERRORS = Counter(
    "tollhouse_quota_counter_file_errors_total",
    "Failed commits of the embedded limiter's counter file (retried every second)",
)
REDIS_RESEEDS = Counter(
    "tollhouse_quota_redis_reseeds_total",
    "Quota counters found missing in Redis (a restart without persistence) and re-seeded "
    "from this replica's last known total",
)
