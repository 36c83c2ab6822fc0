"""Prometheus metrics of the webhook outbox (default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_EVENTS",
    "WEBHOOK_OLDEST_PENDING_AGE",
    "WEBHOOK_QUEUE_DEPTH",
    "WEBHOOK_STORE_ERRORS",
]

WEBHOOK_EVENTS = Counter(
    "tollhouse_webhook_events_total",
    "Events offered to the outbox by type and result (recorded, duplicate: dedupe key seen)",
    ["type", "result"],
)
WEBHOOK_DELIVERIES = Counter(
    "tollhouse_webhook_deliveries_total",
    "Delivery attempts by outcome (delivered, retry, dead, lease_lost)",
    ["outcome"],
)
WEBHOOK_QUEUE_DEPTH = Gauge(
    "tollhouse_webhook_queue_depth", "Pending deliveries to enabled endpoints"
)
WEBHOOK_OLDEST_PENDING_AGE = Gauge(
    "tollhouse_webhook_oldest_pending_age_seconds",
    "Age of the oldest pending delivery to an enabled endpoint (0: none pending)",
)
WEBHOOK_STORE_ERRORS = Counter(
    "tollhouse_webhook_store_errors_total", "Delivery-loop rounds that could not reach the store"
)
