"""``tollhouse trace``: follow an issued invoice's lines back to the requests they bill.

A line covers the billable usage of one customer x meter admitted in one period, in the ledger
generations the invoice saw: ``gen <= upto_seq`` for the period's lines, ``prev < gen <= upto_seq``
for an adjustment (late usage of an earlier period; ``prev`` is the previous invoice's
``upto_seq``), exactly as :mod:`tollhouse.billing.invoice` built it. Tracing reads those records
from the ledger (schema 3 keeps each final record), recomputes units, record count and the
usage-id digest (:mod:`tollhouse.billing.digest`), and compares them with the invoice's line: equal
digests prove the line is the sum of exactly these records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from tollhouse.billing.digest import digest
from tollhouse.billing.ledger import Ledger
from tollhouse.billing.ledger_records import StoredRecord, stored_records
from tollhouse.billing.periods import period_for_label

__all__ = ["LineTrace", "TraceError", "TraceRow", "trace_invoice"]


class TraceError(Exception):
    """The invoice or line asked for does not exist (bad input, exit 2)."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request behind a line."""

    usage_id: str
    decision_id: str
    admitted_at_ms: int
    request_id: str
    state: str
    units: int


@dataclass(frozen=True, slots=True)
class LineTrace:
    """One invoice line, what the invoice says and what its records add up to."""

    index: int  # 1-based: the lines, then the adjustments, in document order
    kind: str  # "line" | "adjustment"
    period: str
    meter: str
    quantity: int
    records: int
    digest: str
    found_units: int
    found_records: int
    found_digest: str
    untraceable: int  # rows in the line's range kept without their record (ledger schema < 3)
    rows: tuple[TraceRow, ...] = field(repr=False)

    @property
    def ok(self) -> bool:
        """The records are exactly the line: same units, count and digest, none untraceable."""
        return (
            self.untraceable == 0
            and self.found_digest == self.digest
            and self.found_units == self.quantity
            and self.found_records == self.records
        )

    def to_json(self, *, rows: bool = True) -> dict[str, Any]:
        """Return the JSON form (``rows``: with the requests)."""
        out: dict[str, Any] = {
            "line": self.index,
            "kind": self.kind,
            "period": self.period,
            "meter": self.meter,
            "invoice": {"quantity": self.quantity, "records": self.records, "digest": self.digest},
            "recomputed": {
                "quantity": self.found_units,
                "records": self.found_records,
                "digest": self.found_digest,
            },
            "untraceable_records": self.untraceable,
            "ok": self.ok,
        }
        if rows:
            out["requests"] = [
                {
                    "usage_id": r.usage_id,
                    "decision_id": r.decision_id,
                    "admitted_at_ms": r.admitted_at_ms,
                    "request_id": r.request_id,
                    "state": r.state,
                    "units": r.units,
                }
                for r in self.rows
            ]
        return out


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()) * 1000


def _invoice(ledger: Ledger, number: str) -> tuple[dict[str, Any], int, int]:
    """The document, its ``upto_seq`` and the previous invoice's ``upto_seq`` (0: none)."""
    row = ledger.one(
        "SELECT document, upto_seq, customer, period FROM invoices WHERE number = ?", (number,)
    )
    if row is None:
        raise TraceError(f"no issued invoice {number!r} in the ledger")
    prev = ledger.one(
        "SELECT upto_seq FROM invoices WHERE customer = ? AND period < ?"
        " ORDER BY period DESC LIMIT 1",
        (row[2], row[3]),
    )
    return json.loads(str(row[0])), int(row[1]), 0 if prev is None else int(prev[0])


def _period_ms(ledger: Ledger, customer: str, label: str, anchor: date | None) -> tuple[int, int]:
    """An earlier period's bounds: from its own invoice when issued, else from the anchor."""
    row = ledger.one(
        "SELECT document FROM invoices WHERE customer = ? AND period = ?", (customer, label)
    )
    if row is not None:
        doc = json.loads(str(row[0]))
        return _ms(doc["period_start"]), _ms(doc["period_end"])
    p = period_for_label(label, anchor)
    return p.start_ms, p.end_ms


def _trace(
    index: int, kind: str, period: str, line: dict[str, Any], records: Iterable[StoredRecord]
) -> LineTrace:
    meter = str(line["meter"])
    rows, untraceable = [], 0
    for r in records:
        if r.record is None:
            untraceable += 1
            continue
        if meter not in r.record.units:
            continue
        rows.append(
            TraceRow(
                r.usage_id,
                r.record.decision_id,
                r.admitted_at_ms,
                r.record.request_id,
                r.state,
                int(r.record.units[meter]),
            )
        )
    return LineTrace(
        index,
        kind,
        period,
        meter,
        int(line["quantity"]),
        int(line["records"]),
        str(line["digest"]),
        sum(r.units for r in rows),
        len(rows),
        digest(r.usage_id for r in rows),
        untraceable,
        tuple(rows),
    )


def trace_invoice(
    ledger: Ledger, number: str, *, anchor: date | None = None, line: str | None = None
) -> list[LineTrace]:
    """Trace every line of issued invoice ``number`` (or one: its 1-based number or meter).

    ``anchor``: the customer's period anchor, for adjustments of periods never invoiced
    (default: the day this invoice's period starts on, which is the anchor unless clamped).
    """
    doc, upto, prev = _invoice(ledger, number)
    cust = str(doc["customer"])
    if anchor is None:
        start = datetime.fromisoformat(str(doc["period_start"]).replace("Z", "+00:00")).date()
        anchor = None if start.day == 1 else start
    wanted = [("line", str(doc["period"]), ln) for ln in doc["lines"]]
    wanted += [("adjustment", str(a["period"]), a) for a in doc["adjustments"]]
    picked = list(enumerate(wanted, 1))
    if line is not None:
        picked = [
            (i, w)
            for i, w in picked
            if str(i) == line or (w[0] == "line" and w[2]["meter"] == line)
        ]
        if not picked:
            raise TraceError(
                f"invoice {number} has no line {line!r} (1..{len(wanted)} or a meter of its lines)"
            )
    cache: dict[tuple[str, str], list[StoredRecord]] = {}
    out = []
    for i, (kind, period, ln) in picked:
        if (kind, period) not in cache:
            if kind == "line":
                lo, hi, gens = _ms(doc["period_start"]), _ms(doc["period_end"]), (0, upto)
            else:
                lo, hi = _period_ms(ledger, cust, period, anchor)
                gens = (prev, upto)
            cache[(kind, period)] = list(
                stored_records(
                    ledger,
                    lo,
                    hi,
                    customer=cust,
                    min_seq=gens[0],
                    max_seq=gens[1],
                    billable_only=True,
                )
            )
        out.append(_trace(i, kind, period, ln, cache[(kind, period)]))
    return out
