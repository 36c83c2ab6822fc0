"""The billing job reading subscriptions, plan changes and top-ups from the entitlement store."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.servers import free_port
from tests.support import Clock
from tests.support.billing import (
    DEC_2026,
    JAN_2027,
    NOV_2026,
    open_meter,
    record,
    write_meter,
)
from tests.support.billing_store import MY_PLANS, bill, config, in_store, migrated_store_url  # noqa: F401 - fixture store_url
from tollhouse import periods as windows
from tollhouse.billing.job import run_billing
from tollhouse.billing.job_cli import add_bill_arguments, main_bill
from tollhouse.billing.periods import period_containing, period_for_label
from tollhouse.billing.pricing import BaseFeeSegment, prorate_segments
from tollhouse.billing.store_subscriptions import StoreSubscriptions
from tollhouse.store import StoreService

OCT_2020 = int(datetime(2020, 10, 1, tzinfo=UTC).timestamp())


def test_mid_period_plan_change_prorates_both_base_fees(tmp_path: Path, store_url: str) -> None:
    """A store customer moved from pro to team mid-November pays each fee for its seconds."""
    clock = Clock(NOV_2026 + 3600)
    change = NOV_2026 + 12 * 86400 + 12_345

    async def setup(s: StoreService) -> None:
        await s.create_customer(
            actor="t", name="Delta", plan="pro", customer_id="delta", anchor=date(2026, 11, 1)
        )
        await s.change_plan("delta", "team", actor="t", effective_at=change)

    in_store(store_url, clock, setup)
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"d{i}", "delta", NOV_2026 + i * 3600, {"requests": 2}) for i in range(60)],
    )
    doc = bill(config(tmp_path, store_url), tmp_path, "2026-11", JAN_2027)["delta"]
    length = DEC_2026 - NOV_2026
    expected = prorate_segments(
        [
            BaseFeeSegment("pro", Decimal("49.00"), NOV_2026, change, length),
            BaseFeeSegment("team", Decimal("19.99"), change, DEC_2026, length),
        ],
        "USD",
    )
    assert [(b["plan"], b["seconds"], Decimal(b["amount"])) for b in doc["base_fees"]] == [
        ("pro", change - NOV_2026, expected[0]),
        ("team", DEC_2026 - change, expected[1]),
    ]
    assert all(b["prorated"] for b in doc["base_fees"])
    assert doc["plan"] == "team"  # usage is priced by the plan in effect at the period's end
    line = next(ln for ln in doc["lines"] if ln["meter"] == "requests")
    assert (line["quantity"], line["included"], line["amount"]) == (120, 50, "0.21")
    assert Decimal(doc["total"]) == expected[0] + expected[1] + Decimal("0.21")


def test_topup_adds_included_units_to_its_period_only(tmp_path: Path, store_url: str) -> None:
    """A top-up of November grows November's included units; December's top-up is not used."""
    clock = Clock(NOV_2026 + 60)

    async def setup(s: StoreService) -> None:
        for cid in ("echo", "plain"):
            await s.create_customer(
                actor="t", name=cid, plan="starter", customer_id=cid, anchor=date(2026, 11, 1)
            )
        await s.add_topup("echo", "requests", 500, actor="t")  # the current period: November
        await s.add_topup("echo", "requests", 9000, actor="t", period="2026-12-01")

    in_store(store_url, clock, setup)
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [
            record(f"{c}{i}", c, NOV_2026 + 7200 + i, {"requests": 7})
            for c in ("echo", "plain")
            for i in range(100)
        ],
    )
    docs = bill(config(tmp_path, store_url), tmp_path, "2026-11", JAN_2027)
    echo = next(ln for ln in docs["echo"]["lines"] if ln["meter"] == "requests")
    plain = next(ln for ln in docs["plain"]["lines"] if ln["meter"] == "requests")
    assert (echo["quantity"], echo["included"], echo["billable_quantity"]) == (700, 600, 100)
    assert (echo["topup"], echo["amount"]) == (500, "0.20")
    assert (plain["included"], plain["billable_quantity"], plain["amount"]) == (100, 600, "1.20")
    assert "topup" not in plain


def test_store_customer_shadows_config_customer(tmp_path: Path, store_url: str) -> None:
    """The store's acme (team) wins over the config's acme (pro); config-only beta still bills."""
    in_store(
        store_url,
        Clock(NOV_2026 + 60),
        lambda s: s.create_customer(
            actor="t", name="Acme", plan="team", customer_id="acme", anchor=date(2026, 11, 1)
        ),
    )
    cfg = config(tmp_path, store_url, {"acme": {"plan": "pro"}, "beta": {"plan": "starter"}})
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [
            record(f"{c}{i}", c, NOV_2026 + 86400 + i, {"requests": 1})
            for c in ("acme", "beta")
            for i in range(10)
        ],
    )
    docs = bill(cfg, tmp_path, "2026-11", JAN_2027)
    assert sorted(docs) == ["acme", "beta"]
    assert (docs["acme"]["plan"], docs["acme"]["total"]) == ("team", "19.99")
    assert (docs["beta"]["plan"], docs["beta"]["total"]) == ("starter", "5.00")
    subs = StoreSubscriptions(store_url, cfg, clock=lambda: JAN_2027)
    assert list(subs.customers()) == ["acme", "beta"]


def test_cancelled_customer_is_not_invoiced_after_cancellation(
    tmp_path: Path, store_url: str
) -> None:
    """Cancelled in November: November is invoiced in full, December is skipped silently."""
    clock = Clock(NOV_2026 + 60)

    async def setup(s: StoreService) -> None:
        await s.create_customer(
            actor="t", name="Foxtrot", plan="team", customer_id="fox", anchor=date(2026, 11, 1)
        )
        clock.t = NOV_2026 + 20 * 86400
        await s.set_status("fox", "cancelled", actor="t")

    in_store(store_url, clock, setup)
    write_meter(open_meter(tmp_path / "meter.db"), [])
    cfg = config(tmp_path, store_url)
    assert bill(cfg, tmp_path, "2026-11", JAN_2027)["fox"]["total"] == "19.99"
    res = run_billing(
        cfg, period="2026-12", out_dir=tmp_path / "out", preview=False, clock=lambda: JAN_2027 + 1
    )
    assert (res.invoices, res.problems) == ((), ())


def test_plan_missing_from_catalog_is_a_problem(tmp_path: Path, store_url: str) -> None:
    """A store plan the config does not price is reported, not billed as free."""

    async def setup(s: StoreService) -> None:
        await StoreService(s.backend, clock=lambda: NOV_2026).create_customer(
            actor="t", name="Golf", plan="legacy", customer_id="golf", anchor=date(2026, 11, 1)
        )

    in_store(store_url, Clock(NOV_2026), setup)
    write_meter(open_meter(tmp_path / "meter.db"), [])
    res = run_billing(
        config(tmp_path, store_url),
        period="2026-11",
        out_dir=tmp_path / "out",
        preview=False,
        clock=lambda: JAN_2027,
    )
    assert res.invoices == ()
    assert [(p.customer, "'legacy' is not in" in p.message) for p in res.problems] == [
        ("golf", True)
    ]


def _tollhouse(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "tollhouse"
    return subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_bills_store_customers_end_to_end(tmp_path: Path) -> None:
    """`tollhouse store migrate`, `customers create` / `topup`, then `bill`: real CLI, SQLite."""
    cfg_file = tmp_path / "tollhouse.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "meters": {"requests": {}, "tokens": {"from_response_header": "x-tokens"}},
                "plans": json.loads(json.dumps(MY_PLANS)),
                "customers": {"beta": {"plan": "starter"}, "zed": {"plan": "pro"}},
                "metering": {"meter": "sqlite:///./meter.db"},
                "billing": {"ledger": "sqlite:///./ledger.db", "invoices_dir": "inv"},
                "store": {"url": "sqlite:///./store.db"},
            }
        )
    )
    c = ["--config", str(cfg_file)]
    for argv in (
        ["store", "migrate"],
        [
            "customers",
            "create",
            "--name",
            "Zed",
            "--plan",
            "team",
            "--id",
            "zed",
            "--anchor",
            "2020-10-01",
        ],
        ["customers", "topup", "zed", "requests", "30", "--period", "2020-10-01"],
    ):
        done = _tollhouse(tmp_path, *argv, *c)
        assert done.returncode == 0, done.stderr
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"z{i}", "zed", OCT_2020 + 600 * i, {"requests": 1}) for i in range(100)]
        + [record(f"b{i}", "beta", OCT_2020 + 600 * i, {"requests": 1}) for i in range(5)],
    )
    done = _tollhouse(tmp_path, "bill", *c, "--period", "2020-10")
    assert done.returncode == 0, done.stderr
    assert "consumed 105 meter records" in done.stdout
    # team: 19.99 for the whole period (the subscription starts on its anchor), 100 requests
    # - (50 included + 30 top-up) = 20 billable at 0.003 = 0.06
    table = " ".join(done.stdout.split())  # the invoice table's columns are padded
    assert f"TH-2020-10-zed zed USD 20.05 issued {tmp_path}/inv/TH-2020-10-zed.html" in table
    assert "TH-2020-10-beta beta USD 5.00 issued" in table
    doc = json.loads((tmp_path / "inv" / "TH-2020-10-zed.json").read_text())
    assert [(b["plan"], b["prorated"]) for b in doc["base_fees"]] == [("team", False)]
    line = next(ln for ln in doc["lines"] if ln["meter"] == "requests")
    assert (line["included"], line["topup"], line["billable_quantity"]) == (80, 30, 20)


@settings(max_examples=300, deadline=None)
@given(st.integers(2_678_400, 4_102_444_799), st.one_of(st.none(), st.dates(date(2000, 1, 1))))
def test_billing_periods_are_quota_windows_with_month_labels(ts: int, anchor: date | None) -> None:
    """Billing and quota agree on every boundary; billing labels stay YYYY-MM of the start."""
    b, w = period_containing(ts, anchor), windows.period_for(ts, anchor)
    assert (b.start_s, b.end_s) == (w.start_s, w.end_s)
    assert b.label == w.start.strftime("%Y-%m")
    assert period_for_label(b.label, anchor) == b


def test_bill_reports_an_unmigrated_or_unreachable_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unmigrated store exits 2, an unreachable PostgreSQL one 1, before the meter is read."""
    write_meter(open_meter(tmp_path / "meter.db"), [])
    for url, code, text in (
        (f"sqlite://{tmp_path}/empty.db", 2, "store error: store is not"),
        (f"postgresql://postgres@127.0.0.1:{free_port()}/x", 1, "store unavailable: postgresql"),
    ):
        cfg_file = tmp_path / "tollhouse.yaml"
        cfg_file.write_text(
            yaml.safe_dump(
                {
                    "plans": {"free": {}},
                    "metering": {"meter": "sqlite:///./meter.db"},
                    "billing": {"ledger": "sqlite:///./ledger.db"},
                    "store": {"url": url},
                }
            )
        )
        parser = argparse.ArgumentParser()
        add_bill_arguments(parser)
        assert (
            main_bill(parser.parse_args(["--config", str(cfg_file), "--period", "2020-10"])) == code
        )
        err = capsys.readouterr().err
        assert text in err
        assert not (tmp_path / "ledger.db").exists()  # failed before consuming the meter
