"""Billing end to end (issue 6): requests through real Envoy -> meter -> `tollhouse bill`.

One stack and one batch of traffic for the module: two customers on a priced, metered plan, some of
their requests denied, and a caller no one knows, served through `default_plan` (the same plan).
The invoices come from the real CLI run as a subprocess; the customer usage API is called through
Envoy with the customers' own tokens.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    LocalStack,
    build_stack,
    meter_file,
    sqlite_meter_records,
    wait_until,
)
from tollhouse.demo.reports import DemoContext, print_invoices, print_usage
from tollhouse.demo.stack import find_binary

pytestmark = pytest.mark.e2e  # starts a real Envoy

QUOTA, INCLUDED, UNIT = 100, 2, Decimal("0.01")
SENT = {"hana": 7, "ivan": 3, "zed": 4}  # admitted search requests; zed: through default_plan


def _catalog(config: dict[str, Any]) -> dict[str, Any]:
    """The demo config plus a metered plan: quota 100, 2 requests included, then 0.01 each."""
    metered = {
        "features": ["search", "usage"],
        "quotas": {"requests": QUOTA},
        "price": {
            "currency": "USD",
            "meters": {"requests": {"included": INCLUDED, "unit_price": str(UNIT)}},
        },
    }
    metering = {**config["metering"], "unconfirmed_after_s": 1, "flush_interval_ms": 50}
    return {
        **config,
        "plans": {**config["plans"], "metered": metered},
        "customers": {
            **config["customers"],
            "hana": {"plan": "metered"},
            "ivan": {"plan": "metered"},
        },
        "default_plan": "metered",
        "metering": metering,
    }


@dataclass(frozen=True)
class Traffic:
    """The running stack and the usage ids admitted for each customer."""

    stack: LocalStack
    admitted: dict[str, set[str]]


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Traffic]:
    """Start the stack, send allowed and denied requests, wait until the meter has them all."""
    stack = build_stack(
        tmp_path_factory.mktemp(f"billing-{transport}"),
        _catalog,
        usage_listener=True,
        transport=transport,
    ).start()
    try:
        admitted: dict[str, set[str]] = {c: set() for c in SENT}
        for customer, n in SENT.items():
            token = stack.token(customer)
            for _ in range(n):
                resp = stack.request("/v1/search", token=token)
                assert resp.status == 200, resp.body[:200]
                admitted[customer].add(resp.json()["headers"]["x-tollhouse-usage-id"])
            for path in ("/v1/export/x.csv", "/v1/reports/monthly"):  # not entitled: 403
                assert stack.request(path, token=token).status == 403
        assert stack.request("/v1/search", token="not-a-jwt").status == 401
        everything = set().union(*admitted.values())
        wait_until(
            lambda: {r.usage_id for r in sqlite_meter_records(meter_file(stack))},
            lambda ids: everything <= ids,
            timeout_s=15,
            what="all usage in the meter",
        )
        yield Traffic(stack, admitted)
    finally:
        stack.stop()


def _period() -> str:
    now = datetime.now(UTC)
    return f"{now.year:04d}-{now.month:02d}"


def _bill(stack: LocalStack, out: Path) -> subprocess.CompletedProcess[str]:
    """Run ``tollhouse bill`` for the current (still open, so ``--preview``) month."""
    cmd = [
        str(find_binary("tollhouse")),
        "bill",
        "--config",
        str(stack.tollhouse.config_path),
        "--period",
        _period(),
        "--preview",
        "--out",
        str(out),
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": str(Path(sys.executable).parent)},
    )


def _requests_quantity(invoice: dict[str, Any]) -> int:
    return sum(int(ln["quantity"]) for ln in invoice["lines"] if ln["meter"] == "requests")


def test_invoice_quantity_equals_admitted_requests(traffic: Traffic, tmp_path: Path) -> None:
    """`tollhouse bill` bills each customer its admitted requests; denied ones are absent.

    zed, served through `default_plan`, is invoiced and listed as a default_plan customer; a
    config customer without `since:` and without billable usage is not invoiced (a note says so).
    """
    records = sqlite_meter_records(meter_file(traffic.stack))
    for customer, ids in traffic.admitted.items():
        billable = {r.usage_id for r in records if r.customer == customer and r.billable}
        assert billable == ids  # the meter holds exactly the admitted requests, no denied ones
    done = _bill(traffic.stack, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    invoices = {}
    for path in tmp_path.glob("*.json"):
        doc = json.loads(path.read_text())
        invoices[doc["customer"]] = doc
    assert set(SENT) <= set(invoices), sorted(invoices)
    for customer, n in SENT.items():
        inv = invoices[customer]
        assert _requests_quantity(inv) == n
        assert inv["period"] == _period()
        assert inv["currency"] == "USD"
        assert Decimal(inv["total"]) == (n - INCLUDED) * UNIT
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith(inv["number"]))
        assert Path(line.split()[-1]).suffix == ".html"
        assert Path(line.split()[-1]).is_file()  # the HTML invoice the CLI reports exists
    default = next(ln for ln in done.stdout.splitlines() if ln.startswith("default_plan  zed"))
    assert default.split()[:3] == ["default_plan", "zed", "metered"]  # listed, with its start
    assert re.fullmatch(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", " ".join(default.split()[3:]))
    for customer in ("bob", "globex"):  # subscribed (since:), only denied or no traffic
        assert _requests_quantity(invoices[customer]) == 0
    # alice: no since: and only denied requests, so not subscribed yet: no invoice, and a note.
    assert "alice" not in invoices
    assert "NOTE alice: not billed: no billable usage yet and no `since:`" in done.stdout


def _usage(stack: LocalStack, customer: str, **headers: str) -> dict[str, Any]:
    resp = stack.request("/v1/usage", token=stack.token(customer), headers=headers)
    assert resp.status == 200, resp.body[:300]
    assert resp.headers.get("cache-control") == "no-store"
    doc: dict[str, Any] = resp.json()
    return doc


def test_usage_api_shows_own_usage_allowance_and_charges(traffic: Traffic) -> None:
    """GET /v1/usage through Envoy: used, remaining quota, included left, charges so far."""
    for customer, n in SENT.items():
        doc = _usage(traffic.stack, customer)
        assert doc["customer"] == customer
        assert doc["plan"] == "metered"
        assert doc["period"]["label"] == _period()
        req = doc["meters"]["requests"]
        assert (req["used"], req["quota"], req["remaining"]) == (n, QUOTA, QUOTA - n)
        assert req["included_remaining"] == max(0, INCLUDED - n)
        assert Decimal(req["charges"]) == (n - INCLUDED) * UNIT
        assert Decimal(doc["charges_so_far"]) == (n - INCLUDED) * UNIT


def test_usage_api_never_shows_another_customer(traffic: Traffic) -> None:
    """A spoofed x-tollhouse-customer is overwritten: ivan sees ivan's usage, never hana's."""
    doc = _usage(traffic.stack, "ivan", **{"x-tollhouse-customer": "hana"})
    assert doc["customer"] == "ivan"
    assert doc["meters"]["requests"]["used"] == SENT["ivan"]
    assert "hana" not in json.dumps(doc)
    anonymous = traffic.stack.request("/v1/usage", headers={"x-tollhouse-customer": "hana"})
    assert anonymous.status == 401
    assert b"hana" not in anonymous.body


def test_demo_reports_print_usage_and_invoices(traffic: Traffic) -> None:
    """The demo's reports print each customer's metered requests and invoice with its HTML file."""
    out = io.StringIO()
    ctx = DemoContext(traffic.stack, (), out)
    print_usage(ctx)
    print_invoices(ctx)
    text = out.getvalue()
    for customer, n in SENT.items():
        assert re.search(rf"^{customer}\s+requests\s+{n}\s+{n}$", text, re.M), text
        row = re.search(rf"^(TH-\S+)\s+{customer}\s+USD (\S+)\s+preview\s+(\S+)$", text, re.M)
        assert row is not None, text
        assert Decimal(row[2]) == (n - INCLUDED) * UNIT
        assert Path(row[3]).is_file()
