"""The billing CLI, its import hygiene, and the customer-facing GET /v1/usage over real HTTP."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.support.billing import (
    NOV_2026,
    PLANS,
    fixed_usage,
    make_config,
    open_meter,
    record,
    write_meter,
)
from tollhouse.billing.consume import SqliteMeterTotals
from tollhouse.billing.job import run_billing
from tollhouse.billing.job_cli import add_bill_arguments, main_bill
from tollhouse.billing.usage import current_usage
from tollhouse.billing.usage_api import add_usage_route, meter_usage_lookup

OCT_2020 = 1601510400  # 2020-10-01T00:00:00Z: long closed for the real clock the CLI uses


def test_billing_does_not_import_grpc_or_envoy() -> None:
    """Importing the whole billing package pulls in neither grpc nor tollhouse.envoy."""
    code = (
        "import sys, tollhouse.billing.job, tollhouse.billing.usage_api, "
        "tollhouse.billing.consume_redis; "
        "bad = [m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', "
        "'tollhouse.envoy'))]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tollhouse bill")
    add_bill_arguments(parser)
    return main_bill(parser.parse_args(argv))


def test_cli_bills_a_period_and_reports_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bill --config --period --out` issues invoices (exit 0); bad input exits 2."""
    cfg_file = tmp_path / "tollhouse.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "meters": {"requests": {}, "tokens": {"from_response_header": "x-tokens"}},
                "plans": json.loads(json.dumps(PLANS)),
                "customers": {"beta": {"plan": "starter"}},
                "metering": {"meter": "sqlite:///./meter.db"},
                "billing": {"ledger": "sqlite:///./ledger.db", "invoices_dir": "inv"},
            }
        )
    )
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"o{i}", "beta", OCT_2020 + i, {"requests": 100}) for i in range(40)],
    )
    assert _cli(["--config", str(cfg_file), "--period", "2020-10"]) == 0
    out = capsys.readouterr().out
    assert "consumed 40 meter records" in out
    row = next(line for line in out.splitlines() if line.startswith("TH-2020-10-beta "))
    assert row.split() == [
        "TH-2020-10-beta",
        "beta",
        "USD",
        "7.80",
        "issued",
        f"{tmp_path}/inv/TH-2020-10-beta.html",
    ]
    assert (
        _cli(["--config", str(cfg_file), "--period", "2020-10", "--out", str(tmp_path / "again")])
        == 0
    )
    assert "already_issued" in capsys.readouterr().out
    assert (tmp_path / "again" / "TH-2020-10-beta.json").read_bytes() == (
        tmp_path / "inv" / "TH-2020-10-beta.json"
    ).read_bytes()
    assert _cli(["--config", str(cfg_file), "--period", "2020-13"]) == 2
    assert _cli(["--config", str(tmp_path / "missing.yaml"), "--period", "2020-10"]) == 2


async def test_usage_endpoint_shows_only_the_callers_usage(tmp_path: Path) -> None:
    """GET /v1/usage shows the header's customer's usage, allowance, charges; no header: 401."""
    cfg = make_config(tmp_path)
    write_meter(open_meter(tmp_path / "meter.db"), fixed_usage())
    now = NOV_2026 + 20 * 86400
    app = web.Application()
    add_usage_route(app, meter_usage_lookup(cfg, lambda: now))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/v1/usage", headers={"x-tollhouse-customer": "acme"})
        assert resp.status == 200
        body = await resp.json()
        assert (await client.get("/v1/usage")).status == 401
        assert (
            await client.get("/v1/usage", headers={"x-tollhouse-customer": "nobody"})
        ).status == 404
    acme = [
        r
        for r in fixed_usage()
        if r.customer == "acme" and r.billable and r.admitted_at_ms < now * 1000
    ]
    used = sum(r.units["requests"] for r in acme)
    req = body["meters"]["requests"]
    assert body["customer"] == "acme"
    assert body["period"]["label"] == "2026-11"
    assert (req["used"], req["quota"], req["remaining"]) == (used, 5000, 5000 - used)
    assert req["included_remaining"] == max(0, 1000 - used)
    expected = (
        Decimal("49.00") + Decimal(req["charges"]) + Decimal(body["meters"]["tokens"]["charges"])
    )
    assert Decimal(body["charges_so_far"]) == expected


def test_live_usage_prices_like_the_invoice_preview(tmp_path: Path) -> None:
    """current_usage and the invoice preview price the same usage to the same amounts."""
    cfg = make_config(tmp_path)
    write_meter(open_meter(tmp_path / "meter.db"), fixed_usage())
    now = NOV_2026 + 29 * 86400
    report = current_usage(
        cfg, "acme", totals=SqliteMeterTotals(cfg.metering.meter), clock=lambda: now
    )
    assert report is not None
    run_billing(cfg, period=None, out_dir=tmp_path / "p", preview=True, clock=lambda: now)
    doc = json.loads((tmp_path / "p" / "TH-2026-11-acme.preview.json").read_text())
    assert {ln["meter"]: ln["amount"] for ln in doc["lines"]} == {
        m.meter: format(m.amount, "f") for m in report.meters
    }
    assert doc["subtotal"] == format(report.charges_so_far, "f")


def test_usage_cli_shows_its_range_in_iso_utc_and_refuses_bad_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tollhouse usage` prints its range as ISO 8601 UTC (never Unix time); bad --since: exit 2."""
    from tollhouse.cli import main

    cfg_file = tmp_path / "tollhouse.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "meters": {"requests": {}, "tokens": {"from_response_header": "x-tokens"}},
                "plans": json.loads(json.dumps(PLANS)),
                "customers": {"beta": {"plan": "starter"}},
                "metering": {"meter": "sqlite:///./meter.db"},
            }
        )
    )
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"o{i}", "beta", OCT_2020 + i, {"requests": 2}) for i in range(3)],
    )
    assert (
        main(
            [
                "usage",
                "--config",
                str(cfg_file),
                "--since",
                "2020-10-01",
                "--until",
                "2020-11-01T00:00:00",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("usage admitted from 2020-10-01T00:00:00Z to 2020-11-01T00:00:00Z")
    assert "beta" in out
    assert str(OCT_2020) not in out
    assert main(["usage", "--config", str(cfg_file), "--since", "last week"]) == 2
    assert "--since: not an ISO 8601 date or date-time: 'last week'" in capsys.readouterr().err


def test_usage_shows_the_base_fee_from_since_only(tmp_path: Path) -> None:
    """GET /v1/usage's base fee starts at `since:`: prorated mid-period, none before it starts.

    A customer whose `since:` is after the open period still sees its plan and usage (not 404).
    """
    cfg = make_config(
        tmp_path,
        customers={
            "acme": {"plan": "pro", "since": "2026-11-16"},
            "late": {"plan": "pro", "since": "2027-03-01"},
        },
    )
    write_meter(
        open_meter(tmp_path / "meter.db"),
        [record(f"l{i}", "late", NOV_2026 + 86400 * 20 + i, {"requests": 1}) for i in range(3)],
    )
    now = NOV_2026 + 25 * 86400
    totals = SqliteMeterTotals(cfg.metering.meter)
    acme = current_usage(cfg, "acme", totals=totals, clock=lambda: now)
    assert acme is not None
    assert acme.base_fee == Decimal("24.50")  # 49.00 x 15 / 30 days
    late = current_usage(cfg, "late", totals=totals, clock=lambda: now)
    assert late is not None
    assert (late.plan, late.base_fee) == ("pro", Decimal("0.00"))
    assert {m.meter: m.used for m in late.meters}["requests"] == 3
