"""``tollhouse usage``: usage per customer and meter read from the meter, and reconciliation.

Both meter kinds are read the same way: final records, deduplicated by ``usage_id`` (the Redis
stream is at-least-once), filtered on ``admitted_at_ms`` in ``[since_ms, until_ms)`` (UTC).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from tollhouse.config import Config, MeterLocation
from tollhouse.metering.factlog import scan
from tollhouse.metering.facts import decode_fact
from tollhouse.metering.join import Join
from tollhouse.metering.legacy import LEGACY_SPOOL_FILE
from tollhouse.metering.meter_file import connect_ro, has_tables, meter_ready
from tollhouse.metering.policy import Finalizer
from tollhouse.metering.schema import FIELD_RECORD, SELECT_RECORDS_ADMITTED, STREAM_KEY, UsageRecord
from tollhouse.metering.spool import Expand, expand_facts

__all__ = [
    "ReconcileReport",
    "UsageRow",
    "format_reconcile",
    "format_usage",
    "read_meter",
    "reconcile",
    "usage_report",
]

_TIMEOUT_S = 10.0
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Billable units of one meter for one customer, and how many requests contributed."""

    customer: str
    meter: str
    units: int
    requests: int


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """Admitted vs metered: record counts by state, and the billable units in the meter."""

    reserved: int = 0  # still waiting for an access-log entry (in the spool)
    confirmed: int = 0
    voided: int = 0
    unconfirmed: int = 0
    unsent: int = 0  # final, in the spool, not yet acknowledged by the meter
    billed_units: Mapping[str, int] = field(default_factory=dict)


def _read_sqlite(path: Path, since_ms: int, until_ms: int) -> list[bytes]:
    if not path.exists():
        return []
    conn = connect_ro(path, busy_timeout_s=5.0)
    try:
        if not meter_ready(conn):  # the sink has not written its first batch yet
            return []
        rows = conn.execute(SELECT_RECORDS_ADMITTED, (since_ms, until_ms)).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


async def _read_redis(url: str) -> list[bytes]:
    r: aioredis.Redis = aioredis.Redis.from_url(
        url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
    )
    out: list[bytes] = []
    start = "-"
    try:
        while True:
            page = await asyncio.wait_for(r.xrange(STREAM_KEY, min=start, count=_PAGE), _TIMEOUT_S)
            entries = list(page or [])
            for _, fields in entries:
                blob = (fields or {}).get(FIELD_RECORD.encode())
                if isinstance(blob, bytes):
                    out.append(blob)
            if len(entries) < _PAGE:
                return out
            last = entries[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    finally:
        await r.aclose()


async def read_meter(meter: MeterLocation, since_ms: int, until_ms: int) -> list[UsageRecord]:
    """Read final records admitted in ``[since_ms, until_ms)`` from the meter, one per id."""
    if meter.path is not None:
        blobs = await asyncio.to_thread(_read_sqlite, meter.path, since_ms, until_ms)
    else:
        blobs = await _read_redis(meter.url)  # a poison entry is skipped below
    seen: dict[str, UsageRecord] = {}
    for blob in blobs:
        try:
            rec = UsageRecord.FromString(blob)
        except Exception:  # noqa: S112 (a poison entry is the billing job's dead letter)
            continue
        if since_ms <= rec.admitted_at_ms < until_ms and rec.usage_id not in seen:
            seen[rec.usage_id] = rec
    return list(seen.values())


def _aggregate(records: Sequence[UsageRecord], customer: str | None) -> list[UsageRow]:
    units: dict[tuple[str, str], int] = defaultdict(int)
    reqs: dict[tuple[str, str], int] = defaultdict(int)
    for rec in records:
        if not rec.billable or (customer is not None and rec.customer != customer):
            continue
        for meter, n in rec.units.items():
            units[(rec.customer, meter)] += n
            reqs[(rec.customer, meter)] += 1
    return [UsageRow(c, m, units[(c, m)], reqs[(c, m)]) for c, m in sorted(units)]


async def usage_report(
    meter: MeterLocation, since_ms: int, until_ms: int, customer: str | None
) -> list[UsageRow]:
    """Billable units per customer and meter for the range, read from the meter."""
    return _aggregate(await read_meter(meter, since_ms, until_ms), customer)


def _read_legacy(path: Path, since_ms: int, until_ms: int) -> list[tuple[bool, bytes]]:
    """Records of a previous release's ``spool.db`` not yet carried over (no start since)."""
    if not path.exists():
        return []
    conn = connect_ro(path, busy_timeout_s=5.0)
    try:
        if not has_tables(conn, "spool"):
            return []
        rows = conn.execute(
            "SELECT sent_at_ms IS NULL, record FROM spool"
            " WHERE admitted_at_ms >= ? AND admitted_at_ms < ?",
            (since_ms, until_ms),
        ).fetchall()
    finally:
        conn.close()
    return [(bool(r[0]), r[1]) for r in rows]


def _read_facts(spool_dir: Path, expand: Expand | None) -> list[tuple[bool, bytes]]:
    """Replay the fact log read-only: pending reservations and final records it still holds.

    A record the running process finalised as UNCONFIRMED but has not yet delivered shows as
    pending here (the grace period is the running process's decision, not a fact).
    """
    join = Join(lambda _seq: None)
    fin = Finalizer(Config())
    for seq, payload in scan(spool_dir, repair=False):
        try:
            join.apply(expand_facts([decode_fact(payload)], expand), seq, fin, 0)
        except ValueError:
            continue  # counted by the process that owns the log when it replays it
    return [(True, r.SerializeToString()) for r in join.records()]


def _read_spool(
    spool_dir: Path, since_ms: int, until_ms: int, expand: Expand | None
) -> list[tuple[bool, bytes]]:
    out = _read_legacy(spool_dir / LEGACY_SPOOL_FILE, since_ms, until_ms)
    for unsent, blob in _read_facts(spool_dir, expand):
        rec = UsageRecord.FromString(blob)
        if since_ms <= rec.admitted_at_ms < until_ms:
            out.append((unsent, blob))
    return out


async def reconcile(
    spool_dir: Path | str,
    meter: MeterLocation,
    since_ms: int,
    until_ms: int,
    expand: Expand | None = None,
) -> ReconcileReport:
    """Count records by state across the spool and the meter (each usage_id once).

    ``expand`` decodes the raw access-log messages a metering worker's log holds
    (:func:`tollhouse.envoy.als.entries_of`); without it they are not read.
    """
    metered = {r.usage_id: r for r in await read_meter(meter, since_ms, until_ms)}
    spooled = await asyncio.to_thread(_read_spool, Path(spool_dir), since_ms, until_ms, expand)
    states: dict[int, int] = defaultdict(int)
    unsent = 0
    for rec in metered.values():
        states[rec.state] += 1
    seen: set[str] = set()
    for not_sent, blob in spooled:
        rec = UsageRecord.FromString(blob)
        if rec.usage_id in metered or rec.usage_id in seen:
            continue
        seen.add(rec.usage_id)
        states[rec.state] += 1
        if not_sent and rec.state != UsageRecord.RESERVED:
            unsent += 1
    billed: dict[str, int] = defaultdict(int)
    for rec in metered.values():
        if rec.billable:
            for name, n in rec.units.items():
                billed[name] += n
    return ReconcileReport(
        reserved=states[UsageRecord.RESERVED],
        confirmed=states[UsageRecord.CONFIRMED],
        voided=states[UsageRecord.VOIDED],
        unconfirmed=states[UsageRecord.UNCONFIRMED],
        unsent=unsent,
        billed_units=dict(sorted(billed.items())),
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(line.rstrip() for line in lines)


def format_usage(rows: Sequence[UsageRow]) -> str:
    """Render usage rows as an aligned text table (``no usage`` when empty)."""
    if not rows:
        return "no usage in this range"
    body = [(r.customer, r.meter, f"{r.units:,}", f"{r.requests:,}") for r in rows]
    return _table(("customer", "meter", "units", "requests"), body)


def format_reconcile(report: ReconcileReport) -> str:
    """Render a reconciliation report as a readable two-part table."""
    counts = [
        ("reserved (pending)", report.reserved),
        ("confirmed", report.confirmed),
        ("voided", report.voided),
        ("unconfirmed", report.unconfirmed),
        ("unsent (in spool)", report.unsent),
    ]
    top = _table(("records", "", "count"), [(k, "", f"{v:,}") for k, v in counts])
    units = [(m, "", f"{n:,}") for m, n in report.billed_units.items()]
    bottom = _table(("billed meter", "", "units"), units) if units else "no billed units"
    return f"{top}\n\n{bottom}"
