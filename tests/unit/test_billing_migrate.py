"""Ledger v2/v3/v4: a v1 ledger (an old release) migrates losslessly; digests; the duplicate path.

``data/ledger_v1.json`` was written by the previous release's billing job (commit 4f930b1): the
meter below (:func:`_part1`) billed for 2026-11 at 2026-12-16, then :func:`_part2` (late November
records and December ones) consumed by a preview at 2026-12-21. It holds every v1 table's rows
and the SHA-256 of the invoice files that release wrote.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.billing import (
    DEC_2026,
    JAN_2027,
    NOV_2026,
    fixed_usage,
    make_config,
    open_meter,
    record,
    write_meter,
)
from tollhouse.billing.digest import digest
from tollhouse.billing.job import BillingResult, run_billing
from tollhouse.billing.ledger import LedgerRow, open_ledger
from tollhouse.billing.ledger_schema import COMMON_DDL, V1_DDL
from tollhouse.config import Config
from tollhouse.metering.schema import UsageRecord

FIXTURE = Path(__file__).parent / "data" / "ledger_v1.json"
CUSTOMERS = {
    "acme": {"plan": "pro"},
    "beta": {"plan": "starter"},
    "gamma": {"plan": "bulk", "period_anchor": "2026-01-15"},
}
NOV_AT, PREVIEW_AT, DEC_AT = DEC_2026 + 16 * 86400, DEC_2026 + 20 * 86400, JAN_2027 + 16 * 86400


def _part1() -> list[UsageRecord]:
    out = []
    for i in range(90):
        cust = ("acme", "beta", "gamma")[i % 3]
        units = {"requests": 40 + i} | ({"tokens": 300 + 7 * i} if cust == "acme" else {})
        out.append(
            record(
                f"{i:012x}{'a' * 20}",
                cust,
                NOV_2026 - 20 * 86400 + i * 40000,
                units,
                billable=i % 11 != 0,
            )
        )
    return out


def _part2() -> list[UsageRecord]:
    late = [
        record(
            f"late-{i}",
            ("acme", "beta", "gamma")[i % 3],
            NOV_2026 + 3600 * (i + 1),
            {"requests": 500 + i},
        )
        for i in range(6)
    ]
    return late + [
        record(f"dec-{i}", ("acme", "beta")[i % 2], DEC_2026 + 7200 * (i + 1), {"requests": 30 + i})
        for i in range(4)
    ]


def _load_v1(url: str, meter: Path) -> dict[str, Any]:
    """Write the fixture's rows into v1 tables at ``url``, the cursor pointing at ``meter``."""
    data = json.loads(FIXTURE.read_text())
    data["meter_cursor"]["rows"][0][0] = f"sqlite:{meter.resolve()}"
    sqlite = url.startswith("sqlite:")
    ddl = (V1_DDL + ";" + COMMON_DDL).format(
        serial="INTEGER PRIMARY KEY AUTOINCREMENT" if sqlite else "BIGSERIAL PRIMARY KEY",
        without_rowid=" WITHOUT ROWID" if sqlite else "",
    )
    conn: Any = (
        sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        if sqlite
        else psycopg.connect(url, autocommit=True)
    )
    mark = "?" if sqlite else "%s"
    try:
        for stmt in ddl.split(";"):
            conn.execute(stmt)
        for table in ("ledger_usage", "ledger_units", "meter_cursor", "invoices", "billed"):
            cols = data[table]["columns"]
            sql = (
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES"  # noqa: S608 - test data
                f" ({', '.join([mark] * len(cols))})"
            )
            conn.cursor().executemany(sql, data[table]["rows"])
    finally:
        conn.close()
    return data


def _bill(cfg: Config, period: str | None, now: int, out: Path | None) -> BillingResult:
    res = run_billing(cfg, period=period, out_dir=out, preview=period is None, clock=lambda: now)
    assert res.ok, res.problems
    return res


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_v1_ledger_migrates_without_loss(ledger_url: str, tmp_path: Path) -> None:
    """Issued v1 invoices re-render byte-identical; the next period bills as if never migrated."""
    meter = tmp_path / "meter.db"
    write_meter(open_meter(meter), _part1() + _part2())
    data = _load_v1(ledger_url, meter)
    cfg = make_config(tmp_path, ledger=ledger_url, customers=CUSTOMERS)
    nov = _bill(cfg, "2026-11", NOV_AT, tmp_path / "nov")
    assert nov.consumed == 0  # the v1 cursor still holds
    assert [i.status for i in nov.invoices] == ["already_issued"] * 3
    assert {n: hashlib.sha256(b).hexdigest() for n, b in _files(tmp_path / "nov").items()} == (
        data["files_sha256"]
    )
    _bill(cfg, "2026-12", DEC_AT, tmp_path / "dec")
    ref = tmp_path / "ref"  # the same history on a ledger that was v2 from the start
    ref_meter = open_meter(ref / "meter.db")
    ref_cfg = make_config(ref, customers=CUSTOMERS)
    write_meter(ref_meter, _part1())
    _bill(ref_cfg, "2026-11", NOV_AT, None)
    write_meter(ref_meter, _part2())
    _bill(ref_cfg, None, PREVIEW_AT, None)
    _bill(ref_cfg, "2026-12", DEC_AT, ref / "dec")
    assert _files(tmp_path / "dec") == _files(ref / "dec")
    dec = json.loads((tmp_path / "dec" / "TH-2026-12-acme.json").read_text())
    assert [(a["period"], a["quantity"]) for a in dec["adjustments"]] == [("2026-11", 1003)]
    ledger = open_ledger(ledger_url)
    try:
        tables = ledger.exec("SELECT COUNT(*) FROM ledger_ids").fetchone()[0]
        version = ledger.one("SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0]
    finally:
        ledger.close()
    assert (tables, version) == (100, 4)


def test_newer_ledger_schema_is_refused(tmp_path: Path) -> None:
    """A ledger written by a newer release is refused with a clear error, not reinterpreted."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    open_ledger(url).close()
    conn = sqlite3.connect(tmp_path / "ledger.db")
    conn.execute("UPDATE ledger_meta SET value = 5 WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match="ledger schema version 5 is newer"):
        open_ledger(url)


def test_line_digest_is_the_sum_of_its_usage_id_hashes(tmp_path: Path) -> None:
    """Each golden line's digest equals the reference digest over exactly that line's ids."""
    cfg = make_config(tmp_path)
    usage = fixed_usage()
    write_meter(open_meter(tmp_path / "meter.db"), usage)
    _bill(cfg, "2026-11", JAN_2027, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "TH-2026-11-acme.json").read_text())
    for line in doc["lines"]:
        ids = [
            r.usage_id
            for r in usage
            if r.customer == "acme"
            and r.billable
            and line["meter"] in r.units
            and r.admitted_at_ms < DEC_2026 * 1000
        ]
        assert line["digest"] == digest(reversed(ids)) == digest(sorted(ids))
        assert line["records"] == len(ids)


def test_meter_rows_already_in_the_ledger_are_counted_once(ledger_url: str, tmp_path: Path) -> None:
    """Usage ids that reached the ledger another way first are skipped in a batch, the rest kept."""
    cfg = make_config(tmp_path, ledger=ledger_url)
    usage = fixed_usage()[:300]
    ledger = open_ledger(ledger_url)
    try:
        ledger.insert_rows(
            [
                LedgerRow(
                    r.usage_id,
                    r.customer,
                    r.admitted_at_ms,
                    r.billable,
                    tuple(sorted(r.units.items())),
                )
                for r in usage[100:150]
            ]
        )
    finally:
        ledger.close()
    write_meter(open_meter(tmp_path / "meter.db"), usage)
    _bill(cfg, None, DEC_2026 - 10, None)
    ledger = open_ledger(ledger_url)
    try:
        got = ledger.meter_lines("beta", NOV_2026 * 1000, DEC_2026 * 1000)["requests"]
        ids = ledger.usage_ids("beta", NOV_2026 * 1000, DEC_2026 * 1000)
    finally:
        ledger.close()
    beta = [r for r in usage if r.customer == "beta" and r.billable]
    assert (got.units, got.records) == (sum(r.units["requests"] for r in beta), len(beta))
    assert got.digest == digest(r.usage_id for r in beta)
    assert ids == sorted(r.usage_id for r in beta)


def test_v2_ledger_gains_records_in_place(ledger_url: str, tmp_path: Path) -> None:
    """A v2 ledger migrates to v4: invoices unchanged, old rows untraceable, new ones traced."""
    from tests.support.transparency import traced_usage
    from tollhouse.billing.trace import trace_invoice

    cfg = make_config(tmp_path, ledger=ledger_url, customers=CUSTOMERS)
    meter = open_meter(tmp_path / "meter.db")
    write_meter(meter, traced_usage())
    _bill(cfg, "2026-11", NOV_AT, None)
    ledger = open_ledger(ledger_url)
    try:  # what the previous release left: schema 2, no record column
        ledger.exec("ALTER TABLE ledger_ids DROP COLUMN record")
        ledger.exec("DROP TABLE credits_applied")
        ledger.exec("UPDATE ledger_meta SET value = 2 WHERE key = 'schema_version'")
        before = ledger.get_invoice("acme", "2026-11")
    finally:
        ledger.close()
    write_meter(
        meter,
        [record(f"dec-{i}", "acme", DEC_2026 + 7200 * (i + 1), {"requests": 3}) for i in range(4)],
    )
    _bill(cfg, "2026-12", DEC_AT, None)
    ledger = open_ledger(ledger_url)
    try:
        version = ledger.one("SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0]
        assert ledger.get_invoice("acme", "2026-11") == before
        nov = trace_invoice(ledger, "TH-2026-11-acme", line="requests")[0]
        dec = trace_invoice(ledger, "TH-2026-12-acme", line="requests")[0]
    finally:
        ledger.close()
    assert version == 4
    assert (nov.ok, nov.found_records, nov.untraceable) == (False, 0, nov.records)
    assert dec.ok
    assert dec.found_records == 4


def test_v3_ledger_gains_credits_applied_in_place(ledger_url: str, tmp_path: Path) -> None:
    """A v3 ledger gets the empty credits table: invoices unchanged, credit recorded on issue."""
    cfg = make_config(tmp_path, ledger=ledger_url, customers=CUSTOMERS)
    write_meter(open_meter(tmp_path / "meter.db"), _part1())
    _bill(cfg, "2026-11", NOV_AT, None)
    ledger = open_ledger(ledger_url)
    try:  # what the previous release left: schema 3, no credits table
        ledger.exec("DROP TABLE credits_applied")
        ledger.exec("UPDATE ledger_meta SET value = 3 WHERE key = 'schema_version'")
        before = ledger.get_invoice("acme", "2026-11")
    finally:
        ledger.close()
    ledger = open_ledger(ledger_url)
    try:
        version = ledger.one("SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0]
        assert (version, ledger.get_invoice("acme", "2026-11")) == (4, before)
        assert ledger.credits_used("acme") == {}
        assert ledger.issue(
            "TH-2026-12-acme",
            "acme",
            "2026-12",
            ledger.seal(),
            "{}",
            (),
            [("cg_a", 120), ("cg_b", 5)],
        )
        assert ledger.credits_used("acme") == {"cg_a": 120, "cg_b": 5}
        assert ledger.credits_used("beta") == {}
    finally:
        ledger.close()
