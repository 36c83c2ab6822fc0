"""Billing policy at finalisation: the final state, ``billable`` and the ``units`` of a record.

Pure functions over plain values; the finaliser (metering/join.py) calls them when a record's
facts meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tollhouse.config import Config, MeterConfig
from tollhouse.metering.metrics import HEADER_UNIT_ERRORS
from tollhouse.metering.schema import UsageRecord

__all__ = ["Finalizer", "LogEntry", "header_units"]

_MAX_UNITS = 2**63 - 1
_DEFAULT_METER = MeterConfig()


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One HTTP access-log entry, as the metering code needs it (no protobuf).

    ``usage_id`` is None when the entry carries no tollhouse metadata (Envoy never used an OK
    for it); ``request_id`` then finds a reservation whose answer came too late, to void it.
    ``response_headers`` has lower-case names and holds only the headers Envoy was told to log.
    """

    usage_id: str | None
    response_code: int = 0
    request_id: str = ""  # Envoy's x-request-id: joins an entry whose Check answer Envoy dropped
    request_bytes: int = 0
    response_bytes: int = 0
    duration_us: int = 0
    upstream_served: bool = False
    response_flags: str = ""
    response_headers: Mapping[str, str] = field(default_factory=dict)


def header_units(value: str | None) -> int | None:
    """Parse a meter header: its integer, or None when missing, negative or garbage."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        return None
    n = int(text)
    return n if n <= _MAX_UNITS else None


class Finalizer:
    """Applies the config's billing policy. Immutable: ``reconfigure`` builds a new one."""

    __slots__ = ("_bill_5xx", "_bill_unconfirmed", "_features", "_meters", "header_names")

    def __init__(self, cfg: Config) -> None:
        self._meters: Mapping[str, MeterConfig] = cfg.meters
        self._features = {name: f.meters for name, f in cfg.features.items()}
        self._bill_5xx = cfg.metering.bill_upstream_5xx
        self._bill_unconfirmed = cfg.metering.bill_unconfirmed
        self.header_names: tuple[str, ...] = tuple(
            sorted(
                {
                    m.source.removeprefix("header:")
                    for m in self._meters.values()
                    if m.source.startswith("header:")
                }
            )
        )  # the response headers a served fact must keep

    def meters_of(self, feature: str) -> tuple[str, ...]:
        """Return the meters a feature counts (``requests`` for an unknown feature)."""
        return tuple(self._features.get(feature, ("requests",)))

    def _meter(self, name: str) -> MeterConfig:
        return self._meters.get(name, _DEFAULT_METER)

    def request_units(self, feature: str) -> dict[str, int]:
        """Units known at admission: 1 for every request-counted meter of the feature."""
        return {m: 1 for m in self.meters_of(feature) if self._meter(m).source == "requests"}

    def confirm(self, rec: UsageRecord, entry: LogEntry, now_ms: int) -> UsageRecord:
        """Finalise a RESERVED record with its access-log entry: CONFIRMED or VOIDED (a copy)."""
        out = UsageRecord()
        out.CopyFrom(rec)
        out.response_code = entry.response_code
        out.request_bytes = entry.request_bytes
        out.response_bytes = entry.response_bytes
        out.duration_us = entry.duration_us
        out.upstream_served = entry.upstream_served
        out.response_flags = entry.response_flags
        out.finalized_at_ms = now_ms
        out.units.clear()
        if not entry.upstream_served:
            out.state = UsageRecord.VOIDED
            out.billable = False
            return out
        out.state = UsageRecord.CONFIRMED
        is_5xx = 500 <= entry.response_code <= 599
        for name in self.meters_of(rec.feature):
            meter = self._meter(name)
            own = meter.bill_upstream_5xx
            bill_5xx = self._bill_5xx if own is None else own
            if is_5xx and not bill_5xx:
                continue
            out.units[name] = self._units(name, meter, entry)
        out.billable = bool(out.units)
        return out

    def expire(self, rec: UsageRecord, now_ms: int) -> UsageRecord:
        """Finalise a RESERVED record with no access-log entry after the grace: UNCONFIRMED."""
        out = UsageRecord()
        out.CopyFrom(rec)
        out.state = UsageRecord.UNCONFIRMED
        out.finalized_at_ms = now_ms
        out.units.clear()
        if self._bill_unconfirmed:
            out.units.update(self.request_units(rec.feature))
        out.billable = bool(out.units)
        return out

    @staticmethod
    def _units(name: str, meter: MeterConfig, entry: LogEntry) -> int:
        source = meter.source
        if source == "requests":
            return 1
        if source == "request_bytes":
            return min(entry.request_bytes, _MAX_UNITS)
        if source == "response_bytes":
            return min(entry.response_bytes, _MAX_UNITS)
        header = source.removeprefix("header:")
        n = header_units(entry.response_headers.get(header))
        if n is None:
            HEADER_UNIT_ERRORS.labels(meter=name).inc()
            return 0
        return n
