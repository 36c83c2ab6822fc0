"""Prometheus metrics of the billing job (default registry, ``tollhouse_billing_`` prefix)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["DEAD_LETTERED", "INVOICES_ISSUED", "LATE_RECORDS", "RECORDS_CONSUMED"]

RECORDS_CONSUMED = Counter(
    "tollhouse_billing_records_consumed_total",
    "Meter records read into the ledger (duplicates included), by meter kind.",
    ["source"],
)
DEAD_LETTERED = Counter(
    "tollhouse_billing_dead_lettered_total",
    "Meter stream entries moved to the dead-letter stream, by reason.",
    ["reason"],
)
INVOICES_ISSUED = Counter(
    "tollhouse_billing_invoices_issued_total",
    "Invoices issued (recorded in the ledger; re-runs of an issued period do not count).",
)
LATE_RECORDS = Counter(
    "tollhouse_billing_late_records_total",
    "Usage records billed as an adjustment because their period was already invoiced.",
)
