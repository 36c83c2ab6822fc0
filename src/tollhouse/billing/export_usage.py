"""``tollhouse export usage``: the final usage records of a period, for other systems.

Records come from the ledger (what ``tollhouse bill`` consumed; schema 3 keeps each final record),
so an export works after the Redis meter stream was trimmed. A customer's period is its billing
period (its anchor, as on its invoice); customers without a subscription use calendar months.

Formats, one record per line / row:

- ``jsonl``: the record's fields (units as an object);
- ``csv``: the same, one ``units_<meter>`` column per meter of the config;
- ``cloudevents``: CloudEvents 1.0 JSON (structured mode, one event per line) as OpenMeter and
  Lago ingest them: ``id`` = usage id, ``source`` = ``tollhouse/<instance>``, ``type`` =
  ``tollhouse.usage``, ``subject`` = customer, ``time`` = admission time, ``data`` = the record.

Rows kept without their record (consumed before ledger schema 3) cannot be exported: they are
counted and reported, never skipped quietly.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tollhouse.billing.ledger import Ledger
from tollhouse.billing.ledger_records import StoredRecord, iso_ms, stored_records
from tollhouse.billing.periods import period_for_label
from tollhouse.billing.subscriptions import SubscriptionSource

__all__ = ["UsageExport", "export_usage", "period_records", "record_json"]

Format = Literal["jsonl", "csv", "cloudevents"]
_WIDEN_MS = 32 * 86_400_000  # anchored periods start up to a month off the calendar month
_CSV = (
    "usage_id",
    "customer",
    "plan",
    "feature",
    "state",
    "billable",
    "admitted_at",
    "finalized_at",
    "decision_id",
    "request_id",
    "method",
    "path",
    "response_code",
    "instance",
)


def period_records(
    ledger: Ledger,
    subs: SubscriptionSource,
    label: str,
    *,
    customer: str | None = None,
    billable_only: bool = False,
) -> Iterator[StoredRecord]:
    """Yield the ledger's records of each customer's period ``label`` (``YYYY-MM``)."""
    cal = period_for_label(label, None)
    bounds: dict[str, tuple[int, int]] = {}
    for r in stored_records(
        ledger,
        cal.start_ms - _WIDEN_MS,
        cal.end_ms + _WIDEN_MS,
        customer=customer,
        billable_only=billable_only,
    ):
        if r.customer not in bounds:
            sub = subs.subscription(r.customer)
            p = period_for_label(label, None if sub is None else sub.anchor)
            bounds[r.customer] = (p.start_ms, p.end_ms)
        lo, hi = bounds[r.customer]
        if lo <= r.admitted_at_ms < hi:
            yield r


def record_json(r: StoredRecord) -> dict[str, Any]:
    """The exported fields of one record (its ``record`` must be kept)."""
    rec = r.record
    assert rec is not None
    return {
        "usage_id": r.usage_id,
        "customer": r.customer,
        "plan": rec.plan,
        "feature": rec.feature,
        "state": r.state,
        "billable": r.billable,
        "admitted_at": iso_ms(r.admitted_at_ms),
        "finalized_at": iso_ms(rec.finalized_at_ms),
        "decision_id": rec.decision_id,
        "request_id": rec.request_id,
        "method": rec.method,
        "path": rec.path,
        "response_code": rec.response_code,
        "instance": rec.instance,
        "units": r.units(),
    }


def _cloudevent(r: StoredRecord) -> dict[str, Any]:
    data = record_json(r)
    return {
        "specversion": "1.0",
        "id": r.usage_id,
        "source": f"tollhouse/{data['instance'] or 'unknown'}",
        "type": "tollhouse.usage",
        "subject": r.customer,
        "time": data["admitted_at"],
        "datacontenttype": "application/json",
        "data": data,
    }


@dataclass
class UsageExport:
    """What an export wrote, and what it could not."""

    exported: int = 0
    untraceable: list[str] = field(default_factory=list)  # usage ids kept without a record


def _jsonl(rows: Iterable[dict[str, Any]], out: io.TextIOBase | Any) -> None:
    for row in rows:
        out.write(json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n")


def export_usage(
    records: Iterable[StoredRecord], fmt: Format, out: Any, meters: Sequence[str]
) -> UsageExport:
    """Write ``records`` to the text stream ``out`` in ``fmt``; ``meters``: the CSV columns."""
    res = UsageExport()

    def kept() -> Iterator[StoredRecord]:
        for r in records:
            if r.record is None:
                res.untraceable.append(r.usage_id)
                continue
            res.exported += 1
            yield r

    if fmt == "csv":
        cols = [*_CSV, *(f"units_{m}" for m in meters)]
        w = csv.DictWriter(out, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in kept():
            row = record_json(r)
            units = row.pop("units")
            extra = sorted(set(units) - set(meters))
            if extra:
                raise ValueError(
                    f"record {r.usage_id} has units of {extra[0]!r}, a meter the "
                    "config does not name"
                )
            w.writerow({**row, **{f"units_{m}": units.get(m, "") for m in meters}})
    elif fmt == "cloudevents":
        _jsonl((_cloudevent(r) for r in kept()), out)
    else:
        _jsonl((record_json(r) for r in kept()), out)
    return res
