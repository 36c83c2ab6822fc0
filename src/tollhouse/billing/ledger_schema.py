"""The ledger's versioned schema: create version 2, or migrate a version-1 ledger in place.

Version 1 (the release before) kept one row per usage (``ledger_usage``, ``seq`` = arrival order)
and one per (usage, meter) (``ledger_units`` with a covering customer/time index), and invoices
recorded ``upto_seq``, the last ``seq`` they covered. Version 2 keeps per customer x meter x UTC day
x generation aggregates (``ledger_buckets``) and the usage ids for dedupe and tracing
(``ledger_ids``); ``gen`` plays the part of ``seq`` (see :mod:`tollhouse.billing.ledger`).

Migration (one transaction, streamed in pages): every v1 ``seq`` becomes the generation
``min(b in B, b >= seq)``, where ``B`` holds every issued invoice's ``upto_seq`` and the newest
``seq``. For every ``u`` in ``B``, ``seq <= u`` exactly when ``gen <= u``, so issued invoices,
re-billing and late-usage adjustments see the same records as before; new generations start above
``max(B)``. ``invoices``, ``billed`` and ``meter_cursor`` are unchanged.

Version 3 adds ``ledger_ids.record``: the serialized final ``tollhouse.v1.UsageRecord`` (decision
id, Envoy request id, state, units per meter, ...), copied as bytes at consume time, so an invoice
line can be traced back to its requests and exported after the Redis stream was trimmed. A v2
ledger gains the column in place (``ALTER TABLE``, no rewrite); its older rows keep ``NULL`` there
(``tollhouse trace`` and the exports count and report them, they never guess).

Version 4 adds ``credits_applied``: the prepaid credit each issued invoice applied, per grant, in
minor units, written in the transaction that issues the invoice. The next invoice subtracts them
from each grant (:mod:`tollhouse.billing.invoice_credits`). Invoices issued before version 4
applied no credit, so a v3 ledger gains the empty table in place.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tollhouse.billing.digest import LANE, id_hash

if TYPE_CHECKING:
    from tollhouse.billing.ledger import Ledger

__all__ = ["SCHEMA_VERSION", "V1_DDL", "V2_DDL", "V4_DDL", "ensure_schema"]

SCHEMA_VERSION = 4
DAY_MS = 86_400_000

V1_DDL = """
CREATE TABLE IF NOT EXISTS ledger_usage (seq {serial}, usage_id TEXT NOT NULL UNIQUE,
    customer TEXT NOT NULL, admitted_at_ms BIGINT NOT NULL, billable INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_units (usage_id TEXT NOT NULL, meter TEXT NOT NULL,
    units BIGINT NOT NULL, customer TEXT NOT NULL, admitted_at_ms BIGINT NOT NULL,
    seq BIGINT NOT NULL, PRIMARY KEY (usage_id, meter)){without_rowid};
CREATE INDEX IF NOT EXISTS ledger_units_cust_time
    ON ledger_units (customer, admitted_at_ms, meter, units, seq)
"""
"""The previous release's usage tables (kept to build v1 ledgers in tests)."""

COMMON_DDL = """
CREATE TABLE IF NOT EXISTS meter_cursor (source TEXT PRIMARY KEY, last_id BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS invoices (number TEXT PRIMARY KEY, customer TEXT NOT NULL,
    period TEXT NOT NULL, upto_seq BIGINT NOT NULL, document TEXT NOT NULL,
    UNIQUE (customer, period));
CREATE TABLE IF NOT EXISTS billed (invoice TEXT NOT NULL, customer TEXT NOT NULL,
    period TEXT NOT NULL, meter TEXT NOT NULL, quantity BIGINT NOT NULL,
    PRIMARY KEY (invoice, period, meter))
"""

V2_DDL = """
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_ids (usage_id TEXT PRIMARY KEY, customer TEXT NOT NULL,
    admitted_at_ms BIGINT NOT NULL, gen BIGINT NOT NULL, billable INTEGER NOT NULL){without_rowid};
CREATE TABLE IF NOT EXISTS ledger_buckets (customer TEXT NOT NULL, meter TEXT NOT NULL,
    day BIGINT NOT NULL, gen BIGINT NOT NULL, units BIGINT NOT NULL, records BIGINT NOT NULL,
    first_ms BIGINT NOT NULL, h_hi BIGINT NOT NULL, h_lo BIGINT NOT NULL,
    PRIMARY KEY (customer, meter, day, gen)){without_rowid}
"""

V3_DDL = "ALTER TABLE ledger_ids ADD COLUMN record {blob}"
"""Version 3: the final record's bytes beside its usage id (``NULL`` for rows of older versions)."""

V4_DDL = """
CREATE TABLE IF NOT EXISTS credits_applied (invoice TEXT NOT NULL, customer TEXT NOT NULL,
    grant_id TEXT NOT NULL, amount BIGINT NOT NULL, PRIMARY KEY (customer, grant_id, invoice))
"""
"""Version 4: credit applied per issued invoice and grant (minor units of its currency)."""

_PAGE = 20_000


def run_ddl(ledger: Ledger, ddl: str) -> None:
    """Run each statement of ``ddl`` with the dialect's serial and WITHOUT ROWID filled in."""
    sqlite = ledger.dialect == "sqlite"
    for stmt in ddl.split(";"):
        if stmt.strip():
            ledger.exec(
                stmt.format(
                    serial="INTEGER PRIMARY KEY AUTOINCREMENT"
                    if sqlite
                    else "BIGSERIAL PRIMARY KEY",
                    without_rowid=" WITHOUT ROWID" if sqlite else "",
                    blob="BLOB" if sqlite else "BYTEA",
                )
            )


def _has_table(ledger: Ledger, name: str) -> bool:
    if ledger.dialect == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    else:
        sql = (
            "SELECT 1 FROM information_schema.tables WHERE table_name = ?"
            " AND table_schema = current_schema()"
        )
    return ledger.one(sql, (name,)) is not None


def ensure_schema(ledger: Ledger) -> None:
    """Create the v4 schema, or migrate v1 / v2 / v3 in place; ``ValueError`` for a newer one."""
    with ledger.transaction():
        if ledger.dialect == "postgres":  # one migrator at a time
            ledger.exec("SELECT pg_advisory_xact_lock(7461626)")
        run_ddl(ledger, COMMON_DDL)
        has_meta = _has_table(ledger, "ledger_meta")
        run_ddl(ledger, V2_DDL)
        version = ledger.one("SELECT value FROM ledger_meta WHERE key = 'schema_version'")
        if version is not None and int(version[0]) > SCHEMA_VERSION:
            raise ValueError(
                f"ledger schema version {version[0]} is newer than this release's"
                f" ({SCHEMA_VERSION}); upgrade tollhouse"
            )
        if version is not None and int(version[0]) == SCHEMA_VERSION:
            return
        if version is None:
            next_gen = (
                _migrate_v1(ledger) if not has_meta and _has_table(ledger, "ledger_usage") else 1
            )
            ledger.exec(
                "INSERT INTO ledger_meta (key, value) VALUES ('schema_version', 2), ('gen', ?)",
                (next_gen,),
            )
        if version is None or int(version[0]) < 3:
            run_ddl(ledger, V3_DDL)  # v2 -> v3
        run_ddl(ledger, V4_DDL)  # v3 -> v4
        ledger.exec(
            "UPDATE ledger_meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,)
        )


def _pages(ledger: Ledger, table: str, cols: tuple[str, ...], nkey: int) -> Iterator[list[Any]]:
    """Yield pages of ``cols`` from ``table``, keyset-paginated on the first ``nkey`` columns."""
    key = ", ".join(cols[:nkey])
    base = f"SELECT {', '.join(cols)} FROM {table}"  # noqa: S608 - constant SQL pieces, values bound
    last: tuple[Any, ...] | None = None
    while True:
        where = "" if last is None else f" WHERE ({key}) > ({', '.join('?' * nkey)})"
        rows = ledger.exec(f"{base}{where} ORDER BY {key} LIMIT {_PAGE}", last or ()).fetchall()
        if not rows:
            return
        yield rows
        last = tuple(rows[-1][:nkey])


def _migrate_v1(ledger: Ledger) -> int:
    """Copy v1 rows into v2 tables, drop the v1 tables; return the first new generation."""
    top = int(ledger.one("SELECT COALESCE(MAX(seq), 0) FROM ledger_usage")[0])
    bounds = sorted({top} | {int(r[0]) for r in ledger.exec("SELECT upto_seq FROM invoices")})

    def gen_of(seq: int) -> int:
        return bounds[min(bisect.bisect_left(bounds, seq), len(bounds) - 1)]

    for rows in _pages(
        ledger, "ledger_usage", ("seq", "usage_id", "customer", "admitted_at_ms", "billable"), 1
    ):
        ledger.executemany(
            "INSERT INTO ledger_ids (usage_id, customer, admitted_at_ms, gen,"
            " billable) VALUES (?, ?, ?, ?, ?)",
            [(u, c, int(at), gen_of(int(s)), int(b)) for s, u, c, at, b in rows],
        )
    buckets: dict[tuple[str, str, int, int], list[int]] = {}
    for rows in _pages(
        ledger,
        "ledger_units",
        ("usage_id", "meter", "units", "customer", "admitted_at_ms", "seq"),
        2,
    ):
        for uid, meter, units, cust, at, seq in rows:
            key = (str(cust), str(meter), int(at) // DAY_MS, gen_of(int(seq)))
            b = buckets.setdefault(key, [0, 0, int(at), 0])
            b[0] += int(units)
            b[1] += 1
            b[2] = min(b[2], int(at))
            b[3] += id_hash(str(uid))
    ledger.upsert_buckets(
        [
            (*k, u, n, first, *divmod(h % (LANE * LANE), LANE))
            for k, (u, n, first, h) in buckets.items()
        ]
    )
    ledger.exec("DROP TABLE ledger_units")
    ledger.exec("DROP TABLE ledger_usage")
    return bounds[-1] + 1
