"""The spool's SQL: schema and one function per operation, run by the spool's writer thread.

Every function takes the writer's connection (inside the batch transaction) and the op's args.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tollhouse.metering.policy import Finalizer, LogEntry
from tollhouse.metering.schema import UsageRecord

__all__ = ["HANDLERS", "SPOOL_DDL", "ApplyResult"]

_RESERVED = int(UsageRecord.RESERVED)
_IN_CHUNK = 500

SPOOL_DDL = """
CREATE TABLE IF NOT EXISTS spool (
    usage_id        TEXT PRIMARY KEY,
    state           INTEGER NOT NULL,      -- UsageRecord.State number
    admitted_at_ms  INTEGER NOT NULL,
    finalized_at_ms INTEGER,
    sent_at_ms      INTEGER,               -- set once the meter sink acknowledged the record
    record          BLOB NOT NULL          -- serialized tollhouse.v1.UsageRecord
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS spool_reserved ON spool (admitted_at_ms) WHERE state = 1;
CREATE INDEX IF NOT EXISTS spool_unsent ON spool (finalized_at_ms)
    WHERE state != 1 AND sent_at_ms IS NULL;
CREATE INDEX IF NOT EXISTS spool_sent ON spool (sent_at_ms) WHERE sent_at_ms IS NOT NULL;
"""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a batch of access-log entries did: the records it finalised, and what it ignored."""

    finalized: tuple[UsageRecord, ...] = ()
    duplicate: int = 0
    unknown: int = 0
    errors: int = 0


def _reserve(conn: sqlite3.Connection, args: tuple[Any, ...]) -> bool:
    usage_id, admitted_ms, blob = args
    cur = conn.execute(
        "INSERT OR IGNORE INTO spool (usage_id, state, admitted_at_ms, record) VALUES (?, ?, ?, ?)",
        (usage_id, _RESERVED, admitted_ms, blob),
    )
    return cur.rowcount == 1  # False: the usage_id exists already


def _update_final(conn: sqlite3.Connection, records: Sequence[UsageRecord], now_ms: int) -> None:
    conn.executemany(
        "UPDATE spool SET state = ?, finalized_at_ms = ?, record = ? WHERE usage_id = ?",
        [(int(r.state), now_ms, r.SerializeToString(), r.usage_id) for r in records],
    )


def _load(conn: sqlite3.Connection, ids: list[str]) -> dict[str, tuple[int, bytes]]:
    rows: dict[str, tuple[int, bytes]] = {}
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i : i + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT usage_id, state, record FROM spool WHERE usage_id IN ({marks})"  # noqa: S608
        for uid, state, blob in conn.execute(sql, chunk):
            rows[uid] = (state, blob)
    return rows


def _entries(conn: sqlite3.Connection, args: tuple[Any, ...]) -> ApplyResult:
    entries: Sequence[LogEntry] = args[0]
    now_ms: int = args[1]
    fin: Finalizer = args[2]
    rows = _load(conn, list({e.usage_id for e in entries if e.usage_id}))
    finalized: list[UsageRecord] = []
    duplicate = unknown = errors = 0
    for e in entries:
        row = rows.get(e.usage_id or "")
        if row is None:
            unknown += 1
            continue
        if row[0] != _RESERVED:  # already final: a duplicate entry never bills twice
            duplicate += 1
            continue
        try:
            out = fin.confirm(UsageRecord.FromString(row[1]), e, now_ms)
        except Exception:  # a corrupt record or a bad entry: count it, keep the rest
            errors += 1
            continue
        rows[out.usage_id] = (int(out.state), b"")
        finalized.append(out)
    _update_final(conn, finalized, now_ms)
    return ApplyResult(tuple(finalized), duplicate, unknown, errors)


def _expire(conn: sqlite3.Connection, args: tuple[Any, ...]) -> list[UsageRecord]:
    before_ms, now_ms, fin, limit = args
    rows = conn.execute(
        "SELECT record FROM spool WHERE state = 1 AND admitted_at_ms <= ?"
        " ORDER BY admitted_at_ms LIMIT ?",
        (before_ms, limit),
    ).fetchall()
    out = [fin.expire(UsageRecord.FromString(r[0]), now_ms) for r in rows]
    _update_final(conn, out, now_ms)
    return out


def _unsent(conn: sqlite3.Connection, args: tuple[Any, ...]) -> list[UsageRecord]:
    rows = conn.execute(
        "SELECT record FROM spool WHERE state != 1 AND sent_at_ms IS NULL"
        " ORDER BY finalized_at_ms LIMIT ?",
        args,
    ).fetchall()
    return [UsageRecord.FromString(r[0]) for r in rows]


def _mark_sent(conn: sqlite3.Connection, args: tuple[Any, ...]) -> None:
    ids, now_ms = args
    conn.executemany(
        "UPDATE spool SET sent_at_ms = ? WHERE usage_id = ? AND state != 1",
        [(now_ms, i) for i in ids],
    )


def _prune(conn: sqlite3.Connection, args: tuple[Any, ...]) -> int:
    cur = conn.execute("DELETE FROM spool WHERE sent_at_ms < ?", args)
    return int(cur.rowcount)


def _counts(conn: sqlite3.Connection, args: tuple[Any, ...]) -> dict[str, int]:
    out = {name: 0 for name in UsageRecord.State.keys()}  # noqa: SIM118 (proto enum API)
    out["unsent"] = 0
    for state, unsent, n in conn.execute(
        "SELECT state, state != 1 AND sent_at_ms IS NULL, COUNT(*) FROM spool GROUP BY 1, 2"
    ):
        out[UsageRecord.State.Name(state)] += n
        if unsent:
            out["unsent"] += n
    return out


def _void(conn: sqlite3.Connection, args: tuple[Any, ...]) -> bool:
    usage_id, now_ms = args
    row = conn.execute(
        "SELECT record FROM spool WHERE usage_id = ? AND state = 1", (usage_id,)
    ).fetchone()
    if row is None:
        return False
    rec = UsageRecord.FromString(row[0])
    rec.state = UsageRecord.VOIDED
    rec.billable = False
    rec.units.clear()
    rec.finalized_at_ms = now_ms
    _update_final(conn, [rec], now_ms)
    return True


def _get(conn: sqlite3.Connection, args: tuple[Any, ...]) -> UsageRecord | None:
    row = conn.execute("SELECT record FROM spool WHERE usage_id = ?", args).fetchone()
    return None if row is None else UsageRecord.FromString(row[0])


HANDLERS: dict[str, Callable[[sqlite3.Connection, tuple[Any, ...]], Any]] = {
    "reserve": _reserve,
    "entries": _entries,
    "expire": _expire,
    "unsent": _unsent,
    "mark_sent": _mark_sent,
    "prune": _prune,
    "counts": _counts,
    "get": _get,
    "void": _void,
}
