"""Usage metering: the durable spool, the billing policy, the meter sinks and the usage report."""

from tollhouse.metering.policy import Finalizer, LogEntry
from tollhouse.metering.service import Metering
from tollhouse.metering.sinks import (
    MeterSink,
    RedisStreamSink,
    SinkError,
    SqliteMeterSink,
    open_sink,
)
from tollhouse.metering.spool import Spool, SpoolError, new_usage_id

__all__ = [
    "Finalizer",
    "LogEntry",
    "MeterSink",
    "Metering",
    "RedisStreamSink",
    "SinkError",
    "Spool",
    "SpoolError",
    "SqliteMeterSink",
    "new_usage_id",
    "open_sink",
]
