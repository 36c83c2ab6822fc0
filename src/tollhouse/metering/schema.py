"""The meter's storage contract, shared by the metering sinks (writers) and the billing job.

Both sides import these names; neither hard-codes a table, stream or field of its own, and
every statement run against the SQLite meter is written here, once: the sink's inserts, the
readers' selects (``tollhouse usage``, the billing job, ``GET /v1/usage``, the row verifier).
The ledger's SQLite-to-SQLite copy (:mod:`tollhouse.billing.ledger_copy`) is the one exception:
it joins the attached meter with ledger tables in statements of its own.

SQLite meter (``sqlite:///path``): one row per final usage record. ``id`` is the consumer's cursor
(monotonic), ``usage_id`` is unique so a re-delivered record is ignored (``INSERT OR IGNORE``).

Redis meter (``redis://host:port/db``): one stream, :data:`STREAM_KEY`; each entry has the fields
:data:`FIELD_USAGE_ID` and :data:`FIELD_RECORD` (a serialized ``tollhouse.v1.UsageRecord``).
Poison entries go to :data:`DEAD_LETTER_KEY`. The stream is never trimmed by length, only below
what every consumer group has acknowledged.
"""

from __future__ import annotations

from tollhouse._pb.tollhouse.v1.usage_pb2 import UsageRecord

__all__ = [
    "DEAD_LETTER_KEY",
    "FIELD_RECORD",
    "FIELD_USAGE_ID",
    "INSERT_UNITS",
    "INSERT_USAGE",
    "METER_SQLITE_DDL",
    "METER_TABLES",
    "SELECT_DAILY_TOTALS",
    "SELECT_RECORDS_ADMITTED",
    "SELECT_ROWS_AFTER",
    "SELECT_ROWS_BETWEEN",
    "SELECT_TOTALS",
    "SELECT_UNITS_BETWEEN",
    "STREAM_KEY",
    "UsageRecord",
    "state_name",
]

STREAM_KEY = "tollhouse:usage"
DEAD_LETTER_KEY = "tollhouse:usage:dead"
FIELD_USAGE_ID = "usage_id"
FIELD_RECORD = "record"

METER_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS usage (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    usage_id        TEXT NOT NULL UNIQUE,
    customer        TEXT NOT NULL,
    plan            TEXT NOT NULL,
    feature         TEXT NOT NULL,
    state           TEXT NOT NULL,           -- CONFIRMED | VOIDED | UNCONFIRMED
    billable        INTEGER NOT NULL,        -- 0 / 1
    admitted_at_ms  INTEGER NOT NULL,
    finalized_at_ms INTEGER NOT NULL,
    record          BLOB NOT NULL            -- serialized tollhouse.v1.UsageRecord
);
CREATE INDEX IF NOT EXISTS usage_customer_time ON usage (customer, admitted_at_ms);
CREATE TABLE IF NOT EXISTS usage_units (
    usage_id TEXT NOT NULL,
    meter    TEXT NOT NULL,
    units    INTEGER NOT NULL,
    PRIMARY KEY (usage_id, meter)
);
"""

METER_TABLES = ("usage", "usage_units")

# --- the sink (one transaction per batch; a re-delivered usage id is ignored) ---------------
INSERT_USAGE = (
    "INSERT OR IGNORE INTO usage (usage_id, customer, plan, feature, state, billable,"
    " admitted_at_ms, finalized_at_ms, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_UNITS = "INSERT OR IGNORE INTO usage_units (usage_id, meter, units) VALUES (?, ?, ?)"

# --- readers ----------------------------------------------------------------------------------
# (since_ms, until_ms): the serialized records admitted in the range
SELECT_RECORDS_ADMITTED = (
    "SELECT record FROM usage WHERE admitted_at_ms >= ? AND admitted_at_ms < ?"
)
# (last id, batch size): the next rows after the consumer's cursor
SELECT_ROWS_AFTER = (
    "SELECT id, usage_id, customer, admitted_at_ms, billable, record FROM usage"
    " WHERE id > ? ORDER BY id LIMIT ?"
)
# (last id, top id): the rows with last < id <= top, and their units
SELECT_ROWS_BETWEEN = (
    "SELECT id, usage_id, customer, admitted_at_ms, billable, record FROM usage"
    " WHERE id > ? AND id <= ? ORDER BY id"
)
SELECT_UNITS_BETWEEN = (
    "SELECT uu.usage_id, uu.meter, uu.units FROM usage u JOIN usage_units uu"
    " ON uu.usage_id = u.usage_id WHERE u.id > ? AND u.id <= ?"
)
# (customer, start_ms, end_ms): billable units per meter, and per UTC day and meter
SELECT_TOTALS = (
    "SELECT uu.meter, SUM(uu.units) FROM usage u JOIN usage_units uu"
    " ON uu.usage_id = u.usage_id WHERE u.customer = ? AND u.billable = 1"
    " AND u.admitted_at_ms >= ? AND u.admitted_at_ms < ?"
    " GROUP BY uu.meter ORDER BY uu.meter"
)
SELECT_DAILY_TOTALS = (
    "SELECT u.admitted_at_ms / 86400000 AS day, uu.meter, SUM(uu.units) FROM usage u"
    " JOIN usage_units uu ON uu.usage_id = u.usage_id WHERE u.customer = ?"
    " AND u.billable = 1 AND u.admitted_at_ms >= ? AND u.admitted_at_ms < ?"
    " GROUP BY day, uu.meter ORDER BY day, uu.meter"
)


def state_name(state: int) -> str:
    """``UsageRecord.State`` number -> its name (``CONFIRMED``)."""
    return str(UsageRecord.State.Name(state))  # type: ignore[arg-type,unused-ignore]
