"""Upgrade: a spool.db left by the previous release (SQLite spool) is drained on first start."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tollhouse.config import Config, MeterLocation, parse_config
from tollhouse.metering import LogEntry, Metering, SqliteMeterSink
from tollhouse.metering.report import usage_report
from tollhouse.metering.schema import UsageRecord

# The previous release's spool schema and writes, verbatim (metering/spool_sql.py before the
# fact log), so this test does not depend on code that reads it.
_OLD_DDL = """
CREATE TABLE IF NOT EXISTS spool (
    usage_id        TEXT PRIMARY KEY,
    state           INTEGER NOT NULL,
    admitted_at_ms  INTEGER NOT NULL,
    finalized_at_ms INTEGER,
    sent_at_ms      INTEGER,
    request_id      TEXT NOT NULL DEFAULT '',
    record          BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS spool_request ON spool (request_id) WHERE state = 1;
CREATE INDEX IF NOT EXISTS spool_reserved ON spool (admitted_at_ms) WHERE state = 1;
CREATE INDEX IF NOT EXISTS spool_unsent ON spool (finalized_at_ms)
    WHERE state != 1 AND sent_at_ms IS NULL;
CREATE INDEX IF NOT EXISTS spool_sent ON spool (sent_at_ms) WHERE sent_at_ms IS NOT NULL;
"""
_OLD_RESERVE = (
    "INSERT OR IGNORE INTO spool (usage_id, state, admitted_at_ms, request_id, record)"
    " VALUES (?, ?, ?, ?, ?)"
)
_OLD_FINAL = "UPDATE spool SET state = ?, finalized_at_ms = ?, record = ? WHERE usage_id = ?"
_OLD_SENT = "UPDATE spool SET sent_at_ms = ? WHERE usage_id = ? AND state != 1"

T0 = 1_900_000_000_000


def _rec(uid: str, state: int = UsageRecord.RESERVED) -> UsageRecord:
    return UsageRecord(
        usage_id=uid,
        customer="acme",
        plan="pro",
        feature="search",
        units={"requests": 1},
        admitted_at_ms=T0,
        state=state,
        request_id=f"r-{uid}",
        billable=state == UsageRecord.CONFIRMED,
    )


def _write_old_spool(spool_dir: Path) -> None:
    """3 RESERVED, 2 final and unsent, 1 final and already sent, as the old writer left them."""
    spool_dir.mkdir(parents=True)
    conn = sqlite3.connect(spool_dir / "spool.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_OLD_DDL)
    conn.execute("BEGIN IMMEDIATE")
    for uid in ("res1", "res2", "res3", "fin1", "fin2", "sent1"):
        rec = _rec(uid)
        conn.execute(_OLD_RESERVE, (uid, 1, T0, rec.request_id, rec.SerializeToString()))
    for uid in ("fin1", "fin2", "sent1"):
        final = _rec(uid, UsageRecord.CONFIRMED)
        final.finalized_at_ms = T0 + 5
        conn.execute(_OLD_FINAL, (int(final.state), T0 + 5, final.SerializeToString(), uid))
    conn.execute(_OLD_SENT, (T0 + 9, "sent1"))
    conn.execute("COMMIT")
    conn.close()


def _cfg(tmp: Path) -> Config:
    return parse_config(
        {
            "metering": {
                "spool": str(tmp / "spool"),
                "meter": f"sqlite:///{tmp / 'meter.db'}",
                "unconfirmed_after_s": 30,
                "flush_interval_ms": 10,
            }
        }
    )


def _meter(tmp: Path) -> dict[str, UsageRecord]:
    conn = sqlite3.connect(tmp / "meter.db")
    rows = conn.execute("SELECT record FROM usage").fetchall()
    conn.close()
    return {r.usage_id: r for r in (UsageRecord.FromString(b[0]) for b in rows)}


async def test_previous_spool_is_drained_on_first_start(tmp_path: Path) -> None:
    """Unsent finals reach the meter; RESERVED rows become reservations confirmed or expired.

    res1 gets its access-log entry after the upgrade (CONFIRMED), res2 is voided by an entry
    without metadata carrying its request id, res3 never gets one (UNCONFIRMED after the grace).
    The row the old meter already acknowledged is not sent again, and a second start of the new
    release finds nothing left to carry over.
    """
    _write_old_spool(tmp_path / "spool")
    now = [T0 / 1000 + 1]
    m = Metering(
        _cfg(tmp_path),
        clock=lambda: now[0],
        instance="new",
        sink=SqliteMeterSink(tmp_path / "meter.db"),
    )
    await m.start()
    await m.ingest(
        [
            LogEntry("res1", response_code=200, upstream_served=True),
            LogEntry(None, response_code=503, request_id="r-res2"),
        ]
    )
    now[0] += 31
    await m.tick()
    await m.stop(deadline_s=2)
    again = Metering(
        _cfg(tmp_path),
        clock=lambda: now[0],
        instance="new",
        sink=SqliteMeterSink(tmp_path / "meter.db"),
    )
    await again.start()
    await again.tick()
    counts = await again.spool.counts()
    await again.stop(deadline_s=2)
    got = _meter(tmp_path)
    states = {uid: UsageRecord.State.Name(r.state) for uid, r in got.items()}
    assert states == {
        "fin1": "CONFIRMED",
        "fin2": "CONFIRMED",
        "res1": "CONFIRMED",
        "res2": "VOIDED",
        "res3": "UNCONFIRMED",
    }
    assert not (tmp_path / "spool" / "spool.db").exists()
    assert (tmp_path / "spool" / "spool.db.migrated").exists()
    assert (counts["RESERVED"], counts["unsent"]) == (0, 0)
    rows = await usage_report(MeterLocation.sqlite(tmp_path / "meter.db"), 0, 2**62, "acme")
    assert [(r.meter, r.units) for r in rows] == [("requests", 4)]
