"""Ledger stores (SQLite and real PostgreSQL), exactly-once consume, late usage, issued invoices."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from pathlib import Path

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
from tests.support.ledger import Crash, CrashAt
from tollhouse.billing.job import BillingResult, JobOptions, run_billing
from tollhouse.billing.ledger import LedgerRow, open_ledger
from tollhouse.config import Config
from tollhouse.subscriber import PlanChange, Subscriber


def _bill(cfg: Config, period: str, out: Path | None, now: float, **kw: object) -> BillingResult:
    return run_billing(
        cfg,
        period=period,
        out_dir=out,
        preview=bool(kw.pop("preview", False)),
        clock=lambda: now,
        **kw,
    )  # type: ignore[arg-type]


def _files(paths: Iterable[Path]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in paths}


def _all_files(res: BillingResult) -> dict[str, bytes]:
    return _files(f for inv in res.invoices for f in inv.files)


def test_insert_is_idempotent_by_usage_id(ledger_url: str) -> None:
    """A usage_id is stored once, ever: re-inserting (even with other units) changes nothing."""
    ledger = open_ledger(ledger_url)
    try:
        rows = [
            LedgerRow(f"u{i}", "acme", NOV_2026 * 1000 + i, True, (("requests", 1),))
            for i in range(10)
        ]
        assert ledger.insert_rows(rows) == 10
        again = [LedgerRow("u3", "acme", NOV_2026 * 1000, True, (("requests", 99),)), *rows[:5]]
        assert ledger.insert_rows(again) == 0
        totals = ledger.meter_totals("acme", NOV_2026 * 1000, DEC_2026 * 1000)
        assert totals == {"requests": (10, 10)}
        assert (
            ledger.insert_rows([LedgerRow("v", "acme", NOV_2026 * 1000, False, (("requests", 5),))])
            == 1
        )
        assert ledger.meter_totals("acme", NOV_2026 * 1000, DEC_2026 * 1000)["requests"] == (10, 10)
    finally:
        ledger.close()


def test_meter_consumed_exactly_once_across_crashes(ledger_url: str, tmp_path: Path) -> None:
    """Crash after commit, then before commit, then re-run twice: each usage billed once."""
    cfg = make_config(tmp_path, ledger=ledger_url)
    usage = fixed_usage()
    write_meter(open_meter(tmp_path / "meter.db"), usage)
    opts = {"batch": 500}
    with pytest.raises(Crash):
        _bill(
            cfg,
            "2026-11",
            None,
            JAN_2027,
            options=JobOptions(hook=CrashAt("after_commit", 2), **opts),
        )  # type: ignore[arg-type]
    with pytest.raises(Crash):
        _bill(
            cfg,
            "2026-11",
            None,
            JAN_2027,
            options=JobOptions(hook=CrashAt("before_commit", 1), **opts),
        )  # type: ignore[arg-type]
    first = _bill(cfg, "2026-11", tmp_path / "a", JAN_2027, options=JobOptions(batch=500))
    second = _bill(cfg, "2026-11", tmp_path / "b", JAN_2027, options=JobOptions(batch=500))
    assert first.ok, first.problems
    assert second.consumed == 0
    assert [i.status for i in second.invoices] == ["already_issued"] * 3
    ledger = open_ledger(ledger_url)
    try:
        totals = ledger.meter_totals("acme", NOV_2026 * 1000, DEC_2026 * 1000)
    finally:
        ledger.close()
    acme = [
        r
        for r in usage
        if r.customer == "acme" and r.billable and r.admitted_at_ms < DEC_2026 * 1000
    ]
    assert totals["requests"] == (sum(r.units["requests"] for r in acme), len(acme))
    assert totals["tokens"][0] == sum(r.units["tokens"] for r in acme)
    clean_cfg = make_config(tmp_path / "clean")
    write_meter(open_meter(tmp_path / "clean" / "meter.db"), usage)
    clean = _bill(clean_cfg, "2026-11", tmp_path / "c", JAN_2027)
    assert _all_files(first) == _all_files(second) == _all_files(clean)


def test_late_record_becomes_adjustment_on_next_period(ledger_url: str, tmp_path: Path) -> None:
    """Usage that arrives after its period was invoiced is an adjustment on the next invoice."""
    cfg = make_config(tmp_path, ledger=ledger_url, customers={"beta": {"plan": "starter"}})
    meter = open_meter(tmp_path / "meter.db")
    write_meter(
        meter, [record(f"n{i}", "beta", NOV_2026 + i * 60, {"requests": 10}) for i in range(300)]
    )
    nov = _bill(cfg, "2026-11", tmp_path / "nov", DEC_2026 + 10)
    nov_files = _all_files(nov)
    assert nov.invoices[0].total == Decimal("5.80")  # (3000 - 100) * 0.002
    write_meter(
        meter,
        [
            record("late-1", "beta", NOV_2026 + 5, {"requests": 400}),
            record("dec-1", "beta", DEC_2026 + 5, {"requests": 50}),
        ],
    )
    again = _bill(cfg, "2026-11", tmp_path / "nov2", DEC_2026 + 20)
    assert again.invoices[0].status == "already_issued"
    assert _all_files(again) == nov_files
    dec = _bill(cfg, "2026-12", tmp_path / "dec", JAN_2027 + 1)
    doc = json.loads((tmp_path / "dec" / "TH-2026-12-beta.json").read_text())
    assert doc["adjustments"] == [
        {
            "period": "2026-11",
            "plan": "starter",
            "meter": "requests",
            "quantity": 400,
            "previously_billed": 3000,
            "records": 1,
            "amount": "0.80",
            "digest": doc["adjustments"][0]["digest"],
        }
    ]
    assert doc["lines"][0]["quantity"] == 50
    assert doc["subtotal"] == "0.00"
    assert doc["minimum_topup"] == "5.00"
    assert dec.invoices[0].total == Decimal("5.80")


def test_plan_change_prorates_base_fee(tmp_path: Path) -> None:
    """A mid-period upgrade prorates both plans' fees by seconds; usage uses the final plan."""
    cfg = make_config(tmp_path, customers={"acme": {"plan": "pro"}})
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record("x1", "acme", NOV_2026 + 3600, {"requests": 1500})],
    )
    change = NOV_2026 + 10 * 86400

    class Subs:
        def customers(self) -> list[str]:
            return ["acme"]

        def subscription(self, customer: str) -> Subscriber | None:
            return Subscriber(
                customer, "pro", (PlanChange("starter", 0), PlanChange("pro", change))
            )

    res = run_billing(
        cfg,
        period="2026-11",
        out_dir=tmp_path / "o",
        preview=False,
        clock=lambda: JAN_2027,
        subscriptions=Subs(),
    )
    doc = json.loads((tmp_path / "o" / "TH-2026-11-acme.json").read_text())
    assert [(b["plan"], b["amount"], b["prorated"]) for b in doc["base_fees"]] == [
        ("starter", "0.00", True),
        ("pro", "32.67", True),
    ]
    assert doc["lines"][0]["amount"] == "5.00"  # pro: (1500 - 1000) * 0.01
    assert res.invoices[0].total == Decimal("49.00")  # 37.67 lifted to pro's minimum


def test_open_period_is_previewed_not_issued(tmp_path: Path) -> None:
    """An open period cannot be issued; --preview prices it and writes no invoice rows."""
    cfg = make_config(tmp_path, customers={"beta": {"plan": "starter"}})
    write_meter(
        open_meter(tmp_path / "meter.db"), [record("p1", "beta", NOV_2026 + 10, {"requests": 3100})]
    )
    now = NOV_2026 + 86400 * 3
    res = _bill(cfg, "2026-11", None, now)
    assert [p.message for p in res.problems] == [
        "2026-11 is still open until 2026-12-01T00:00:00Z; use --preview"
    ]
    pre = run_billing(cfg, period=None, out_dir=tmp_path / "p", preview=True, clock=lambda: now)
    assert pre.invoices[0].status == "preview"
    assert pre.invoices[0].total == Decimal("6.00")
    assert (tmp_path / "p" / "TH-2026-11-beta.preview.html").exists()
    ledger = open_ledger(cfg.billing.ledger)
    try:
        assert ledger.get_invoice("beta", "2026-11") is None
    finally:
        ledger.close()


def test_periods_are_issued_in_order_and_unknown_customers_reported(tmp_path: Path) -> None:
    """Issuing an earlier period after a later one is refused; usage of no customer is reported."""
    cfg = make_config(tmp_path, customers={"beta": {"plan": "starter", "since": "2026-01-01"}})
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record("s1", "stranger", DEC_2026 + 10, {"requests": 1})],
    )
    dec = _bill(cfg, "2026-12", None, JAN_2027 + 1)
    assert dec.invoices[0].status == "issued"
    assert [(p.customer, p.message) for p in dec.problems] == [
        ("stranger", "usage from a customer with no subscription")
    ]
    res = _bill(cfg, "2026-11", None, JAN_2027 + 1)
    assert [p.customer for p in res.problems] == ["beta"]
    assert "precedes the last issued invoice (2026-12)" in res.problems[0].message


def test_anniversary_periods_follow_the_anchor(tmp_path: Path) -> None:
    """An anchored customer's period runs from the anchor day, clamped to the month's end."""
    cfg = make_config(
        tmp_path,
        customers={"gamma": {"plan": "bulk", "since": "2026-01-31", "period_anchor": "2026-01-31"}},
    )
    res = _bill(cfg, "2026-02", tmp_path / "o", JAN_2027)
    doc = json.loads((tmp_path / "o" / "TH-2026-02-gamma.json").read_text())
    assert (doc["period_start"], doc["period_end"]) == (
        "2026-02-28T00:00:00Z",
        "2026-03-31T00:00:00Z",
    )
    assert res.invoices[0].total == Decimal("10.00")
    assert date.fromisoformat(doc["issue_date"]) == date(2026, 3, 31)
