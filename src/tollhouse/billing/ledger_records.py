"""The final records the ledger keeps (schema 3): read back for tracing and exports.

``ledger_ids.record`` holds each usage's serialized ``tollhouse.v1.UsageRecord`` as the meter
delivered it. Rows consumed before schema 3 have none (``record is None``): callers count and
report them. Reads are scans of ``ledger_ids`` (no index on customer or time: consuming stays as
cheap as before), streamed in pages of the cursor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]

from tollhouse.billing.ledger import Ledger
from tollhouse.metering.schema import UsageRecord, state_name

__all__ = ["StoredRecord", "iso_ms", "stored_records"]

_PAGE = 5000


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One usage as the ledger holds it; ``record`` is ``None`` for rows older than schema 3."""

    usage_id: str
    customer: str
    admitted_at_ms: int
    gen: int
    billable: bool
    record: UsageRecord | None

    @property
    def state(self) -> str:
        """``CONFIRMED`` / ``VOIDED`` / ``UNCONFIRMED`` (``?`` when no record is kept)."""
        return "?" if self.record is None else state_name(self.record.state)

    def units(self) -> dict[str, int]:
        """Meter -> units of the final record (empty when no record is kept)."""
        return (
            {}
            if self.record is None
            else {str(k): int(v) for k, v in sorted(self.record.units.items())}
        )


def iso_ms(ms: int) -> str:
    """Unix milliseconds -> ``2026-11-03T10:00:00.123Z`` (UTC)."""
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _parse(raw: bytes | memoryview | None, usage_id: str) -> UsageRecord | None:
    if raw is None:
        return None
    try:
        rec = UsageRecord.FromString(bytes(raw))
    except DecodeError as e:
        raise ValueError(f"ledger record of {usage_id} does not parse: {e}") from None
    if rec.usage_id != usage_id:
        raise ValueError(f"ledger record of {usage_id} names {rec.usage_id!r}")
    return rec


def stored_records(
    ledger: Ledger,
    start_ms: int,
    end_ms: int,
    *,
    customer: str | None = None,
    min_seq: int = 0,
    max_seq: int | None = None,
    billable_only: bool = False,
) -> Iterator[StoredRecord]:
    """Yield records admitted in ``[start_ms, end_ms)`` with ``min_seq < gen <= max_seq``.

    Ordered by admission time, then usage id. A stored record that does not parse, or names
    another usage id, raises ``ValueError`` (a damaged ledger is never exported quietly).
    """
    top = ledger.max_seq() if max_seq is None else max_seq
    sql = (
        "SELECT usage_id, customer, admitted_at_ms, gen, billable, record FROM ledger_ids"
        " WHERE admitted_at_ms >= ? AND admitted_at_ms < ? AND gen > ? AND gen <= ?"
    )
    params: list[object] = [start_ms, end_ms, min_seq, top]
    if customer is not None:
        sql += " AND customer = ?"
        params.append(customer)
    if billable_only:
        sql += " AND billable = 1"
    cur = ledger.exec(sql + " ORDER BY admitted_at_ms, usage_id", params)
    while True:
        rows = cur.fetchmany(_PAGE)
        if not rows:
            return
        for uid, cust, at, gen, billable, raw in rows:
            yield StoredRecord(
                str(uid), str(cust), int(at), int(gen), bool(billable), _parse(raw, str(uid))
            )
