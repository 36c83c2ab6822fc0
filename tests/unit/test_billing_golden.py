"""Golden invoices: a fixed usage set renders to the checked-in JSON, CSV and HTML, byte for byte.

Regenerate after an intended change (and review the diff):
    TOLLHOUSE_REGEN_GOLDEN=1 .venv/bin/pytest -q tests/unit/test_billing_golden.py
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

from tests.support.billing import (
    JAN_2027,
    fixed_usage,
    make_config,
    open_meter,
    write_meter,
)
from tollhouse.billing.job import run_billing

GOLDEN = Path(__file__).parent / "golden"


def test_golden_invoices(tmp_path: Path) -> None:
    """The fixed usage set bills to exactly the golden JSON, CSV and HTML files."""
    cfg = make_config(tmp_path)
    write_meter(open_meter(tmp_path / "meter.db"), fixed_usage())
    res = run_billing(
        cfg, period="2026-11", out_dir=tmp_path / "out", preview=False, clock=lambda: JAN_2027
    )
    assert res.ok, res.problems
    produced = {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())}
    assert len(produced) == 9
    if os.environ.get("TOLLHOUSE_REGEN_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        for old in GOLDEN.glob("TH-*"):
            old.unlink()
        for name, data in produced.items():
            (GOLDEN / name).write_bytes(data)
    expected = {p.name: p.read_bytes() for p in sorted(GOLDEN.glob("TH-*"))}
    assert produced == expected


def test_golden_totals_are_the_sum_of_their_lines() -> None:
    """Each golden invoice's total is exactly base fees + usage lines + minimum + adjustments."""
    for path in sorted(GOLDEN.glob("TH-*.json")):
        doc = json.loads(path.read_text())
        parts = (
            [b["amount"] for b in doc["base_fees"]]
            + [ln["amount"] for ln in doc["lines"]]
            + [doc["minimum_topup"]]
            + [a["amount"] for a in doc["adjustments"]]
        )
        assert Decimal(doc["total"]) == sum(Decimal(p) for p in parts), path.name
        assert Decimal(doc["subtotal"]) + Decimal(doc["minimum_topup"]) + Decimal(
            doc["adjustments_total"]
        ) == Decimal(doc["total"])
