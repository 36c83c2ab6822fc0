"""The meter's storage contract, shared by the metering sinks (writers) and the billing job.

Both sides import these names; neither hard-codes a table, stream or field of its own.

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
    "METER_SQLITE_DDL",
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


def state_name(state: int) -> str:
    """``UsageRecord.State`` number -> its name (``CONFIRMED``)."""
    return str(UsageRecord.State.Name(state))  # type: ignore[arg-type,unused-ignore]
