"""Corrupted pages of the SQLite meter: the billing job refuses loudly and never bills garbage.

SQLite keeps no page checksums, so a flipped bit can leave a file that reads without an error
but names another customer, time or quantity. Before this suite, 20 of 150 single-bit flips
across a meter billed a different invoice without a word. Each row also carries its serialized
``UsageRecord``; the billing job checks the columns it bills from against it
(:func:`tollhouse.metering.meter_file.verify_rows`) and fails the batch.

Spool (fact log) segment corruption is covered in tests/unit/test_metering_factlog.py (a
corrupt record is skipped and counted, the rest kept) and tests/unit/test_metering_salvage.py
(``tollhouse spool check|salvage``); garbage and overwritten meter files in
tests/unit/test_cli_corrupt.py (exit 3, one line).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from tollhouse.billing.job import JobOptions, run_billing
from tollhouse.billing.ledger import open_ledger
from tollhouse.cli import EXIT_DATA
from tollhouse.config import Config, parse_config
from tollhouse.metering.meter_file import MeterCorrupt
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.sinks import SqliteMeterSink

NOV_2026 = 1793491200  # 2026-11-01T00:00:00Z
FLIPS = 80
CONFIG: dict[str, Any] = {
    "meters": {"requests": {}},
    "plans": {
        p: {
            "price": {
                "currency": "USD",
                "meters": {"requests": {"model": "per_unit", "unit_price": price}},
            }
        }
        for p, price in (("pro", "0.01"), ("basic", "0.02"))
    },
    "customers": {
        "acme": {"plan": "pro", "since": "2026-01-01"},
        "beta": {"plan": "basic", "since": "2026-01-01"},
    },
    "metering": {"meter": "sqlite:///./meter.db"},
    "billing": {"ledger": "sqlite:///./ledger.db", "invoices_dir": "invoices"},
}


def _records(n: int) -> list[UsageRecord]:
    return [
        UsageRecord(
            usage_id=f"{i:032x}",
            customer="acme" if i % 3 else "beta",
            plan="pro",
            feature="search",
            units={"requests": 1},
            method="GET",
            path="/v1/search",
            admitted_at_ms=(NOV_2026 + 1800 * i) * 1000,
            state=UsageRecord.CONFIRMED,
            billable=True,
            finalized_at_ms=(NOV_2026 + 1800 * i) * 1000 + 7,
            response_code=200,
        )
        for i in range(n)
    ]


def _meter(folder: Path, n: int = 400) -> Path:
    """A meter written by the real sink, checkpointed into the main file."""

    async def write() -> None:
        sink = SqliteMeterSink(folder / "meter.db")
        await sink.send(_records(n))
        await sink.close()

    folder.mkdir(parents=True, exist_ok=True)
    asyncio.run(write())
    return folder / "meter.db"


def _config(folder: Path) -> Config:
    doc = json.loads(json.dumps(CONFIG))
    doc["metering"]["meter"] = f"sqlite:///{folder}/meter.db"
    doc["billing"] = {
        "ledger": f"sqlite:///{folder}/ledger.db",
        "invoices_dir": str(folder / "invoices"),
    }
    return parse_config(doc)


def _bill(folder: Path) -> dict[str, Any]:
    """Preview November in batches of 50 meter rows; the invoices by customer."""
    result = run_billing(
        _config(folder),
        period="2026-11",
        out_dir=folder / "out",
        preview=True,
        clock=lambda: NOV_2026 + 40 * 86400,
        options=JobOptions(batch=50),
    )
    assert result.ok, result.problems
    docs = (json.loads(p.read_text()) for p in (folder / "out").glob("*.json"))
    return {d["customer"]: (d["total"], d["lines"]) for d in docs}


def _ledger_rows(folder: Path) -> set[tuple[Any, ...]]:
    path = folder / "ledger.db"
    if not path.exists():
        return set()
    conn = sqlite3.connect(path)
    try:
        return set(
            conn.execute("SELECT usage_id, customer, admitted_at_ms, billable FROM ledger_ids")
        )
    finally:
        conn.close()


def test_single_bit_flips_in_the_meter_never_bill_garbage(tmp_path: Path) -> None:
    """Any single flipped bit in the meter file: the same invoices, or a DatabaseError.

    Never a different invoice, and whatever reached the ledger before the error is true to
    the meter in everything billed from (batches are verified before they are copied; a flip
    in a field nothing bills from, such as the path inside a record, is not detected).
    """
    good = _meter(tmp_path / "good")
    reference = _bill(tmp_path / "good")
    truth = _ledger_rows(tmp_path / "good")
    assert len(truth) == 400
    data = good.read_bytes()
    rng = random.Random(17)
    outcomes: Counter[str] = Counter()
    for i in range(FLIPS):
        folder = tmp_path / f"flip{i}"
        folder.mkdir()
        damaged = bytearray(data)
        pos = rng.randrange(100, len(damaged))  # past the header: the pages
        damaged[pos] ^= 1 << rng.randrange(8)
        (folder / "meter.db").write_bytes(damaged)
        try:
            got = _bill(folder)
        except MeterCorrupt:
            outcomes["refused: row disagrees with its record"] += 1
        except sqlite3.DatabaseError:
            outcomes["refused: sqlite error"] += 1
        else:
            assert got == reference, f"a flip at byte {pos} billed a different invoice"
            outcomes["same invoices"] += 1
        assert _ledger_rows(folder) <= truth, f"a flip at byte {pos} put garbage in the ledger"
        shutil.rmtree(folder)
    print(dict(outcomes))  # shown with pytest -rP
    assert outcomes["refused: row disagrees with its record"] > 0, outcomes
    assert outcomes["same invoices"] > 0, outcomes


def test_bill_names_the_damaged_row_exits_3_and_issues_nothing(tmp_path: Path) -> None:
    """A quantity that disagrees with its record: exit 3, one line, nothing billed.

    ``tollhouse bill`` names the meter file and the row, writes no invoice and no ledger row.
    """
    meter = _meter(tmp_path, n=40)
    conn = sqlite3.connect(meter)
    with conn:  # as a flipped bit 10 in that column leaves it: 1 -> 1025
        conn.execute("UPDATE usage_units SET units = 1025 WHERE usage_id = ?", (f"{7:032x}",))
    conn.close()
    (tmp_path / "tollhouse.yaml").write_text(yaml.safe_dump(CONFIG))
    exe = Path(sys.executable).parent / "tollhouse"
    proc = subprocess.run(
        [str(exe), "bill", "--config", str(tmp_path / "tollhouse.yaml"), "--period", "2026-11"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_DATA == 3, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tollhouse ")]
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        f"tollhouse bill: cannot read sqlite://{tmp_path}/meter.db: meter row 8 (usage id "
        f"'{7:032x}'): usage_units say {{'requests': 1025}}, its record says {{'requests': 1}}"
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "invoices").exists() or not list((tmp_path / "invoices").iterdir())
    assert _ledger_rows(tmp_path) == set()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    server = request.getfixturevalue("postgres_server")  # CI installs PostgreSQL: never skip
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{server.url.rsplit('/', 1)[0]}/{name}"


@pytest.mark.parametrize("column", ["customer", "billable", "record"])
def test_every_ledger_refuses_a_row_that_disagrees_with_its_record(
    tmp_path: Path, ledger_url: str, column: str
) -> None:
    """SQLite and PostgreSQL ledgers alike: a damaged row stops the run, its batch is not copied.

    The batches before it (verified) are in the ledger; nothing of the damaged batch or after.
    """
    meter = _meter(tmp_path, n=120)
    change = {
        "customer": "UPDATE usage SET customer = 'beta' WHERE id = 75",
        "billable": "UPDATE usage SET billable = 0 WHERE id = 75",
        "record": "UPDATE usage SET record = X'0aff' WHERE id = 75",
    }[column]
    conn = sqlite3.connect(meter)
    with conn:
        conn.execute(change)
    conn.close()
    doc = json.loads(json.dumps(CONFIG))
    doc["metering"]["meter"] = f"sqlite:///{meter}"
    doc["billing"] = {"ledger": ledger_url, "invoices_dir": str(tmp_path / "invoices")}
    with pytest.raises(MeterCorrupt, match=r"^meter row 75 \(usage id '0+4a'\): ") as err:
        run_billing(
            parse_config(doc),
            period="2026-11",
            out_dir=tmp_path / "out",
            preview=True,
            clock=lambda: NOV_2026 + 40 * 86400,
            options=JobOptions(batch=50),
        )
    assert err.value.path == meter.resolve()
    assert not (tmp_path / "out").exists()
    ledger = open_ledger(ledger_url)
    try:
        ids = {str(r[0]) for r in ledger.exec("SELECT usage_id FROM ledger_ids").fetchall()}
    finally:
        ledger.close()
    assert ids == {f"{i:032x}" for i in range(50)}  # the first batch only: rows 1-50
