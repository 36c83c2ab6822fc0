"""Prometheus metrics of the usage path (default registry, names prefixed ``tollhouse_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "ALS_ENTRIES",
    "ALS_MALFORMED",
    "ALS_MESSAGES",
    "ENTRIES_IGNORED",
    "FACTLOG_CORRUPT",
    "FACTS_LOST",
    "HEADER_UNIT_ERRORS",
    "HOOK_ERRORS",
    "SERVED_ORPHANS",
    "SINK_ERRORS",
    "SINK_SENT",
    "SPOOL_COMMITS",
    "SPOOL_PENDING",
    "SPOOL_UNSENT",
    "SPOOL_WRITE_ERRORS",
    "USAGE_FINALIZED",
    "USAGE_RESERVED",
    "WORKER_FAMILIES",
]

USAGE_RESERVED = Counter(
    "tollhouse_usage_reserved_total", "Reserved facts written durably to the fact log."
)
USAGE_FINALIZED = Counter(
    "tollhouse_usage_finalized_total",
    "Usage records finalised, by final state and whether they are billable.",
    ["state", "billable"],
)
ENTRIES_IGNORED = Counter(
    "tollhouse_usage_entries_ignored_total",
    "Access-log entries that changed nothing: duplicate (record already final) or unknown id.",
    ["reason"],
)
HEADER_UNIT_ERRORS = Counter(
    "tollhouse_usage_header_unit_errors_total",
    "Header meters whose response header was missing or not a non-negative integer (0 units).",
    ["meter"],
)
HOOK_ERRORS = Counter(
    "tollhouse_usage_hook_errors_total", "Exceptions raised by the on_confirmed hook."
)
ALS_MESSAGES = Counter(
    "tollhouse_als_messages_total",
    "StreamAccessLogs messages received, by outcome: ok, recovered (refused by protobuf, read"
    " entry by entry), garbage (not one entry readable).",
    ["outcome"],
)
ALS_ENTRIES = Counter(
    "tollhouse_als_entries_total",
    "Access-log entries received, by outcome (ingested, no_metadata, non_http, error,"
    " unreadable: its own bytes do not parse, lost).",
    ["outcome"],
)
ALS_MALFORMED = Counter(
    "tollhouse_als_malformed_total",
    "Malformed parts of access-log messages, by reason: invalid_utf8 (a string field, replaced;"
    " the entry is used), bad_usage_id (not 32 lowercase hex digits; ignored), unreadable_entry"
    " (an entry that does not parse; lost), truncated_message (the message's framing broke).",
    ["reason"],
)
SPOOL_COMMITS = Counter(
    "tollhouse_spool_commits_total", "Fact log batches written and fdatasynced (group commit)."
)
SPOOL_WRITE_ERRORS = Counter(
    "tollhouse_spool_write_errors_total", "Fact log batch writes that failed (disk full, I/O)."
)
SPOOL_PENDING = Gauge(
    "tollhouse_spool_reserved", "Reservations waiting for their served fact (access-log entry)."
)
SPOOL_UNSENT = Gauge("tollhouse_spool_unsent", "Final records not yet acknowledged by the meter.")
SINK_SENT = Counter(
    "tollhouse_meter_records_sent_total", "Final usage records acknowledged by the meter sink."
)
SINK_ERRORS = Counter(
    "tollhouse_meter_send_errors_total", "Failed batch sends to the meter sink (retried)."
)
FACTLOG_CORRUPT = Counter(
    "tollhouse_factlog_corrupt_total",
    "Fact log records or segment headers that failed their check at recovery (skipped).",
)
FACTS_LOST = Counter(
    "tollhouse_usage_facts_lost_total",
    "Served facts (access-log entries) that could not be written to the fact log.",
)
SERVED_ORPHANS = Counter(
    "tollhouse_usage_served_orphans_total",
    "Served facts whose reservation never arrived within the grace period (never billed).",
)


# The families the metering worker process updates (``metering.process: worker``): ``serve``
# exposes the worker's samples of these instead of its own (base names, no _total/_created).
WORKER_FAMILIES = frozenset(
    m._name
    for m in (
        USAGE_FINALIZED,
        ENTRIES_IGNORED,
        HEADER_UNIT_ERRORS,
        ALS_MESSAGES,
        ALS_ENTRIES,
        ALS_MALFORMED,
        SPOOL_PENDING,
        SPOOL_UNSENT,
        SINK_SENT,
        SINK_ERRORS,
        FACTLOG_CORRUPT,
        SERVED_ORPHANS,
    )
)
