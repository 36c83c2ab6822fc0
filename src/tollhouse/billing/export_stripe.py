"""``tollhouse export stripe``: a period's billable usage as Stripe billing meter events.

One event per billable final record and mapped meter (``export.stripe.meters``: tollhouse meter ->
Stripe ``event_name``), in the shape of Stripe's meter event stream (v2)::

    {"event_name": "api_requests", "identifier": "<usage id>",
     "timestamp": "2026-11-03T10:00:00.000Z",
     "payload": {"stripe_customer_id": "cus_...", "value": "1"}}

``identifier`` is the usage id (Stripe drops a repeated identifier for at least 24 h, so a retried
or re-run push never counts a request twice); a record that feeds several mapped meters gives one
event per meter, identified ``<usage id>:<meter>``.

Stripe accepts timestamps from 35 days back to 5 minutes ahead of now. An event outside that
window, of a customer without a Stripe customer id, or of a record the ledger keeps without its
body (consumed before ledger schema 3) is refused: listed with its reason, counted, and the command
exits 1. Nothing is dropped quietly.

``--aggregate hour|day``: one event per customer x meter x UTC hour / day, value the sum, timestamp
the bucket's start, identifier a hash of (customer, meter, bucket). Far fewer events (and API
calls), but no per-request identifier: Stripe can no longer tell one request from another, so a
bucket re-sent with late records added is dropped as a duplicate (the late units are lost to
Stripe) and a bucket split across two runs is counted twice if its identifier differs. Aggregate
only periods whose usage is complete (invoiced); export late usage per request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tollhouse.billing.ledger_records import StoredRecord, iso_ms

__all__ = ["AHEAD_MS", "BACK_MS", "MeterEvent", "Refused", "StripeEvents", "build_events"]

BACK_MS = 35 * 86_400_000
AHEAD_MS = 5 * 60_000
_BUCKET_MS = {"hour": 3_600_000, "day": 86_400_000}


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """One Stripe billing meter event."""

    event_name: str
    identifier: str
    stripe_customer_id: str
    value: int
    timestamp_ms: int
    customer: str
    meter: str

    def to_json(self) -> dict[str, Any]:
        """The event as Stripe's meter event stream takes it (payload values are strings)."""
        return {
            "event_name": self.event_name,
            "identifier": self.identifier,
            "timestamp": iso_ms(self.timestamp_ms),
            "payload": {"stripe_customer_id": self.stripe_customer_id, "value": str(self.value)},
        }


@dataclass(frozen=True, slots=True)
class Refused:
    """An event (or record) that was not exported, and why."""

    identifier: str
    customer: str
    meter: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """The JSON form of the report."""
        return {
            "identifier": self.identifier,
            "customer": self.customer,
            "meter": self.meter,
            "reason": self.reason,
        }


@dataclass
class StripeEvents:
    """The events to send, those refused, and units of meters the mapping does not name."""

    events: list[MeterEvent] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    unmapped_units: dict[str, int] = field(default_factory=dict)


def _window(ts_ms: int, now_ms: int) -> str | None:
    if ts_ms < now_ms - BACK_MS:
        return "older than Stripe's 35-day window"
    if ts_ms > now_ms + AHEAD_MS:
        return "more than 5 minutes ahead of now (Stripe's window)"
    return None


def _agg_id(customer: str, meter: str, size: str, start_ms: int) -> str:
    h = hashlib.blake2b(f"{customer}\0{meter}\0{size}\0{start_ms}".encode(), digest_size=16)
    return f"th-{size}-{h.hexdigest()}"


def _per_record(
    records: Iterable[StoredRecord], meters: Mapping[str, str]
) -> Iterable[tuple[str, str, str, int, int] | Refused]:
    """``(identifier, customer, meter, value, timestamp_ms)`` per mapped meter of each record."""
    for r in records:
        if r.record is None:
            yield Refused(
                r.usage_id,
                r.customer,
                "",
                "no stored record (consumed before ledger schema 3); export it from the meter",
            )
            continue
        units = r.units()
        mapped = [m for m in sorted(units) if m in meters]
        for m in mapped:
            ident = r.usage_id if len(mapped) == 1 else f"{r.usage_id}:{m}"
            yield ident, r.customer, m, units[m], r.admitted_at_ms


def build_events(
    records: Iterable[StoredRecord],
    *,
    meters: Mapping[str, str],
    customers: Mapping[str, str],
    now_ms: int,
    aggregate: Literal["hour", "day"] | None = None,
) -> StripeEvents:
    """Turn billable records into meter events; refuse what Stripe would not take."""
    out = StripeEvents()
    items: list[tuple[str, str, str, int, int]] = []
    for item in _per_record(_counting(records, meters, out), meters):
        if isinstance(item, Refused):
            out.refused.append(item)
        else:
            items.append(item)
    if aggregate is not None:
        size = _BUCKET_MS[aggregate]
        acc: dict[tuple[str, str, int], int] = {}
        for _, cust, m, value, ts in items:
            key = (cust, m, ts - ts % size)
            acc[key] = acc.get(key, 0) + value
        items = [
            (_agg_id(c, m, aggregate, start), c, m, v, start)
            for (c, m, start), v in sorted(acc.items())
        ]
    for ident, cust, m, value, ts in items:
        stripe_id = customers.get(cust)
        why = (
            _window(ts, now_ms)
            if stripe_id is not None
            else ("the customer has no Stripe customer id")
        )
        if why is not None or stripe_id is None:
            out.refused.append(Refused(ident, cust, m, why or ""))
            continue
        out.events.append(MeterEvent(meters[m], ident, stripe_id, value, ts, cust, m))
    return out


def _counting(
    records: Iterable[StoredRecord], meters: Mapping[str, str], out: StripeEvents
) -> Iterable[StoredRecord]:
    for r in records:
        for m, u in r.units().items():
            if m not in meters:
                out.unmapped_units[m] = out.unmapped_units.get(m, 0) + u
        yield r
