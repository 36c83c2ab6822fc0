"""Helpers for the export / simulate / trace tests (no tests here): traced usage, config files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.billing import PLANS, fixed_usage
from tollhouse.billing.job import BillingResult, run_billing
from tollhouse.config import Config, load_config
from tollhouse.metering.schema import UsageRecord

CUSTOMERS: dict[str, Any] = {
    "acme": {"plan": "pro"},
    "beta": {"plan": "starter"},
    "gamma": {"plan": "bulk", "period_anchor": "2026-01-15"},
}


def traced_usage() -> list[UsageRecord]:
    """The golden usage set, each record with a decision id and an Envoy request id."""
    out = fixed_usage()
    for i, r in enumerate(out):
        r.decision_id = f"dec-{i:05d}"
        r.request_id = f"req-{i:05d}-{'ab' * 4}"
        r.instance = "pod-a"
    return out


def write_config(
    tmp: Path,
    *,
    ledger: str | None = None,
    store: str | None = None,
    customers: dict[str, Any] | None = None,
    stripe: dict[str, Any] | None = None,
) -> tuple[Path, Config]:
    """Write a config file (the billing tests' catalog) and load it as the CLI would."""
    # Customers that existed all year (as the billing tests' make_config): no first-period
    # proration from the first request, so simulate and bill price the same base fee.
    listed = CUSTOMERS if customers is None else customers
    data: dict[str, Any] = {
        "meters": {"requests": {}, "tokens": {"from_response_header": "x-tokens"}},
        "plans": PLANS,
        "customers": {c: {"since": "2026-01-01", **v} for c, v in listed.items()},
        "metering": {"meter": f"sqlite:///{tmp}/meter.db"},
        "billing": {
            "ledger": ledger or f"sqlite:///{tmp}/ledger.db",
            "invoices_dir": str(tmp / "invoices"),
        },
    }
    if store is not None:
        data["store"] = {"url": store}
    if stripe is not None:
        data["export"] = {"stripe": stripe}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "tollhouse.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, load_config(path)


def bill(
    cfg: Config, period: str | None, now: float, *, preview: bool = False, out: Path | None = None
) -> BillingResult:
    """Run the real billing job; every customer must be billed."""
    res = run_billing(cfg, period=period, out_dir=out, preview=preview, clock=lambda: now)
    assert res.ok, res.problems
    return res
