"""``tollhouse simulate``: real usage priced under a candidate plan, checked against ``bill``."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from tests.support.billing import DEC_2026, JAN_2027, open_meter, record, write_meter
from tests.support.transparency import (
    CUSTOMERS,
    bill,
    traced_usage,
    write_config,
)
from tollhouse.billing.invoice import InvoiceProblem
from tollhouse.billing.ledger import open_ledger
from tollhouse.billing.simulate import Simulation, simulate_period
from tollhouse.billing.transparency_cli import subscriptions
from tollhouse.cli import main

DEC_USAGE = [
    record(
        f"dec-{i}",
        ("acme", "beta", "gamma")[i % 3],
        DEC_2026 + 15 * 86400 + 600 * i,
        {"requests": 40 + i},
    )
    for i in range(30)
]


def test_the_current_plan_as_candidate_gives_bills_totals(ledger_url: str, tmp_path: Path) -> None:
    """Issued November and the previewed open December: candidate totals = bill's, no change."""
    _, cfg = write_config(tmp_path, ledger=ledger_url)
    meter = open_meter(tmp_path / "meter.db")
    write_meter(meter, traced_usage())
    nov = {i.customer: i.total for i in bill(cfg, "2026-11", DEC_2026 + 16 * 86400).invoices}
    write_meter(meter, DEC_USAGE)
    mid_dec = DEC_2026 + 16 * 86400 + 3600
    dec = {i.customer: i.total for i in bill(cfg, None, mid_dec, preview=True).invoices}
    assert set(dec) == set(nov) == set(CUSTOMERS)
    ledger = open_ledger(ledger_url)
    try:
        for label, totals, issued in (("2026-11", nov, True), ("2026-12", dec, False)):
            for cust, spec in CUSTOMERS.items():
                [sim] = simulate_period(
                    ledger, cfg, subscriptions(cfg), label, [spec["plan"]], customer=cust
                )
                assert isinstance(sim, Simulation)
                assert (sim.current_total, sim.candidate_total, sim.issued) == (
                    totals[cust],
                    totals[cust],
                    issued,
                )
                assert (sim.difference, sim.changes) == (Decimal(0), ())
    finally:
        ledger.close()


def test_a_candidate_prices_as_bill_would_on_that_plan(tmp_path: Path) -> None:
    """Customer beta priced under pro = its invoice when really on pro; changed lines listed."""
    _, cfg = write_config(tmp_path / "a")
    write_meter(open_meter(tmp_path / "a" / "meter.db"), traced_usage())
    bill(cfg, "2026-11", JAN_2027)
    ledger = open_ledger(cfg.billing.ledger)
    try:
        [sim] = simulate_period(
            ledger, cfg, subscriptions(cfg), "2026-11", ["pro"], customer="beta"
        )
    finally:
        ledger.close()
    _, on_pro = write_config(tmp_path / "b", customers={**CUSTOMERS, "beta": {"plan": "pro"}})
    write_meter(open_meter(tmp_path / "b" / "meter.db"), traced_usage())
    [ref] = [
        i
        for i in bill(on_pro, "2026-11", JAN_2027, out=tmp_path / "b" / "out").invoices
        if i.customer == "beta"
    ]
    doc = json.loads((tmp_path / "b" / "out" / "TH-2026-11-beta.json").read_text())
    assert isinstance(sim, Simulation)
    assert (sim.current_plan, sim.candidate_plan, sim.candidate_total) == (
        "starter",
        "pro",
        ref.total,
    )
    assert sim.difference == ref.total - sim.current_total != 0
    changed = {c.what: c.candidate for c in sim.changes}
    assert changed["base_fee"] == Decimal(doc["base_fees"][0]["amount"]) == Decimal("49.00")
    assert changed["meter:requests"] == Decimal(doc["lines"][0]["amount"])


def test_cli_matrix_plan_file_and_nothing_issued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--all-plans prints every customer x plan; a plan file prices too; nothing is written."""
    path, cfg = write_config(tmp_path)
    meter = open_meter(tmp_path / "meter.db")
    write_meter(meter, traced_usage())
    bill(cfg, "2026-11", JAN_2027)
    write_meter(meter, DEC_USAGE)
    ledger = open_ledger(cfg.billing.ledger)
    try:
        before = (ledger.max_seq(), ledger.one("SELECT COUNT(*) FROM invoices")[0])
    finally:
        ledger.close()
    assert (
        main(["simulate", "--config", str(path), "--period", "2026-11", "--all-plans", "--json"])
        == 0
    )
    cells = json.loads(capsys.readouterr().out)
    assert [(c["customer"], c["candidate_plan"]) for c in cells] == [
        (c, p) for c in sorted(CUSTOMERS) for p in ("bulk", "pro", "starter")
    ]
    for c in cells:
        same = c["candidate_plan"] == CUSTOMERS[c["customer"]]["plan"]
        assert (c["difference"] == "0.00") == same or c["difference"] is None
        assert (c["difference"] is None) == (c["currency"] != c["candidate_currency"])
    plan = tmp_path / "cheap.yaml"
    plan.write_text(
        "cheap:\n  price:\n    currency: USD\n    meters:\n"
        "      requests: {model: per_unit, unit_price: '0.001'}\n"
    )
    assert (
        main(
            [
                "simulate",
                "--config",
                str(path),
                "--period",
                "2026-11",
                "--plan-file",
                str(plan),
                "--customer",
                "beta",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    beta_units = sum(
        r.units["requests"] for r in traced_usage() if r.customer == "beta" and r.billable
    )
    assert f"USD {Decimal(beta_units) * Decimal('0.001'):.2f}" in table
    assert "    meter:requests: " in table
    plan.write_text("cheap:\n  price: {meters: {egress: {model: per_unit, unit_price: '1'}}}\n")
    assert (
        main(["simulate", "--config", str(path), "--period", "2026-11", "--plan-file", str(plan)])
        == 2
    )
    assert "cheap.price.meters.egress: unknown meter 'egress'" in capsys.readouterr().err
    assert main(["simulate", "--config", str(path), "--period", "2026-11", "--plan", "gold"]) == 2
    assert "unknown plan 'gold'" in capsys.readouterr().err
    ledger = open_ledger(cfg.billing.ledger)
    try:
        assert (ledger.max_seq(), ledger.one("SELECT COUNT(*) FROM invoices")[0]) == before
        sims = simulate_period(ledger, cfg, subscriptions(cfg), "2026-12", ["pro"])
    finally:
        ledger.close()
    assert not any(isinstance(s, InvoiceProblem) for s in sims)
    assert not (tmp_path / "invoices" / "TH-2026-12-acme.json").exists()
