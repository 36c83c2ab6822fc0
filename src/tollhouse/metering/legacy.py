"""Upgrade from the previous release's spool: ``spool.db`` (SQLite) becomes facts.

The previous release kept every usage record in ``<spool>/spool.db``, table ``spool``: RESERVED
rows (``state = 1``) waiting for the access log, and final rows waiting for the meter
(``sent_at_ms IS NULL``). On the first start of this release, :func:`read_legacy` turns the first
into reserved facts and the second into final facts; the caller writes them to the fact log,
waits for the fdatasync, and only then calls :func:`retire_legacy`, which renames the file to
``spool.db.migrated`` (kept for inspection; nothing reads it again). A crash in between replays
the same rows at the next start: the finaliser keeps one record per usage id and the meter
dedupes by usage id, so nothing is lost or billed twice. Rows already acknowledged by the meter
are not carried over.
"""

from __future__ import annotations

from pathlib import Path

from tollhouse.logs import get_logger
from tollhouse.metering.facts import Fact, Final, Reserved, encode_final, encode_reserved
from tollhouse.metering.metrics import FACTLOG_CORRUPT
from tollhouse.metering.schema import UsageRecord
from tollhouse.sqlite import connect_existing

__all__ = ["LEGACY_SPOOL_FILE", "legacy_payloads", "read_legacy", "retire_legacy"]

log = get_logger(__name__)

LEGACY_SPOOL_FILE = "spool.db"
_MIGRATED_SUFFIX = ".migrated"


def read_legacy(directory: Path) -> list[Fact] | None:
    """The facts of ``directory/spool.db``, or None when there is no such file.

    Opened read-write (never created) so SQLite recovers a WAL the old process left behind.
    Raises ``sqlite3.Error`` for a file that is not a readable spool: the start fails loudly
    rather than leaving reservations behind.
    """
    path = directory / LEGACY_SPOOL_FILE
    if not path.exists():
        return None
    conn = connect_existing(path, timeout_s=5.0, read_only=False)  # its journal may need recovery
    try:
        has = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spool'"
        ).fetchone()
        rows = (
            []
            if has is None
            else conn.execute(
                "SELECT state, record FROM spool WHERE state = 1 OR sent_at_ms IS NULL"
                " ORDER BY admitted_at_ms"
            ).fetchall()
        )
    finally:
        conn.close()
    facts: list[Fact] = []
    bad = 0
    for state, blob in rows:
        try:
            rec = UsageRecord.FromString(blob)
        except Exception:
            bad += 1
            continue
        if state == UsageRecord.RESERVED:
            facts.append(Reserved(rec.usage_id, rec.admitted_at_ms, rec.request_id, bytes(blob)))
        else:
            facts.append(Final(rec))
    if bad:
        FACTLOG_CORRUPT.inc(bad)
        log.error("legacy_spool.unreadable_records", records=bad, path=str(path))
    return facts


def retire_legacy(directory: Path) -> None:
    """Rename ``spool.db`` (and any WAL files) once its facts are durable in the fact log."""
    for name in (LEGACY_SPOOL_FILE, f"{LEGACY_SPOOL_FILE}-wal", f"{LEGACY_SPOOL_FILE}-shm"):
        src = directory / name
        if src.exists():
            src.replace(directory / (name + _MIGRATED_SUFFIX))


def legacy_payloads(facts: list[Fact]) -> list[bytes]:
    """The fact-log payloads of a legacy spool's facts (reserved and final ones)."""
    return [
        encode_final(f.record) if isinstance(f, Final) else encode_reserved(f.record)
        for f in facts
        if isinstance(f, Final | Reserved)
    ]
