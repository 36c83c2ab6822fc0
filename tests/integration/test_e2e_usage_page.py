"""The customer usage page and invoice downloads in a real headless Chromium, through real Envoy.

One stack per transport: two customers (hana, ivan) on a priced plan whose ``shadow_price:`` is
another plan, both subscribed since the start of last month. Their requests go through Envoy into
the SQLite meter; ``tollhouse bill --period <last month>`` issues last month's invoices (the
base fee) and copies the meter into the ledger. The browser (Debian's chromium, driven by
playwright) sends each customer's own bearer token on every request, as a customer's browser
session would through a gateway.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from tollhouse.demo.stack import find_binary

pytestmark = pytest.mark.e2e  # starts a real Envoy

CHROMIUM = "/usr/bin/chromium"  # Debian's package (Makefile sysdeps); playwright downloads none
SENT = {"hana": 6, "ivan": 3}
BASE, INCLUDED, UNIT = Decimal("10.00"), 2, Decimal("0.01")
SHADOW_BASE, SHADOW_UNIT = Decimal("4.00"), Decimal("0.05")


def _month(offset: int = 0) -> str:
    now = datetime.now(UTC).replace(day=1)
    if offset < 0:
        now = (now - timedelta(days=1)).replace(day=1)
    return f"{now.year:04d}-{now.month:02d}"


def _catalog(config: dict[str, Any]) -> dict[str, Any]:
    """A priced plan with quota 100 and shadow_price: next (another base fee and unit price)."""
    metered = {
        "features": ["search", "usage"],
        "quotas": {"requests": 100},
        "shadow_price": "next",
        "price": {
            "currency": "USD",
            "base_fee": str(BASE),
            "meters": {"requests": {"included": INCLUDED, "unit_price": str(UNIT)}},
        },
    }
    nxt = {
        "features": ["search", "usage"],
        "price": {
            "currency": "USD",
            "base_fee": str(SHADOW_BASE),
            "meters": {"requests": {"unit_price": str(SHADOW_UNIT)}},
        },
    }
    since = f"{_month(-1)}-01"
    metering = {**config["metering"], "unconfirmed_after_s": 1, "flush_interval_ms": 50}
    auth = {**config["auth"], "api_keys": {**config["auth"]["api_keys"], "keys": []}}
    return {
        **config,
        "auth": auth,
        "plans": {**config["plans"], "metered": metered, "next": nxt},
        "customers": {c: {"plan": "metered", "since": since} for c in SENT},
        "default_plan": None,
        "metering": metering,
    }


@dataclass(frozen=True)
class Site:
    """The running stack; last month's invoice number per customer."""

    stack: LocalStack
    invoices: dict[str, str]


def _cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(find_binary("tollhouse")), *args, "--config", str(stack.tollhouse.config_path)]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": str(Path(sys.executable).parent)},
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Site]:
    """Start the stack, send the customers' requests, wait for the meter, issue last month."""
    stack = build_stack(
        tmp_path_factory.mktemp(f"usage-page-{transport}"),
        _catalog,
        usage_listener=True,
        transport=transport,
    ).start()
    try:
        for customer, n in SENT.items():
            token = stack.token(customer)
            for _ in range(n):
                assert stack.request("/v1/search", token=token).status == 200
        wait_until(
            lambda: [r for r in sqlite_meter_records(meter_file(stack)) if r.billable],
            lambda recs: len(recs) >= sum(SENT.values()),
            timeout_s=15,
            what="every request in the meter",
        )
        done = _cli(stack, "bill", "--period", _month(-1))
        assert done.returncode == 0, done.stdout + done.stderr[-2000:]
        yield Site(stack, {c: f"TH-{_month(-1)}-{c}" for c in SENT})
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (the system's, never a download)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "chromium is missing: run `make sysdeps`"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@dataclass
class Visit:
    """A page opened for one customer, and everything the console said."""

    page: Any
    status: int
    headers: dict[str, str]
    errors: list[str]


def _visit(browser: Any, site: Site, customer: str, path: str = "/v1/usage") -> Visit:
    context = browser.new_context(
        extra_http_headers={"authorization": f"Bearer {site.stack.token(customer)}"}
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    resp = page.goto(site.stack.base_url + path)
    assert resp is not None
    return Visit(page, resp.status, dict(resp.headers), errors)


def _json(site: Site, customer: str) -> dict[str, Any]:
    resp = site.stack.request(
        "/v1/usage", token=site.stack.token(customer), headers={"accept": "application/json"}
    )
    assert resp.status == 200, resp.body[:300]
    doc: dict[str, Any] = resp.json()
    return doc


def _text(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text()).replace("\xa0", " ").strip()


def test_page_shows_the_json_numbers_and_the_meter(browser: Any, site: Site) -> None:
    """Each customer's page shows the meter's units and the JSON's charges, without errors.

    Used units = the meter's records, charges and projection = the JSON's, the chart's bars sum
    to the units used; the page is served under a strict CSP and logs no console error.
    """
    records = sqlite_meter_records(meter_file(site.stack))
    for customer, n in SENT.items():
        metered = sum(
            int(r.units["requests"]) for r in records if r.customer == customer and r.billable
        )
        assert metered == n
        doc = _json(site, customer)
        assert doc["meters"]["requests"]["used"] == n
        assert Decimal(doc["charges_so_far"]) == BASE + (n - INCLUDED) * UNIT
        v = _visit(browser, site, customer)
        after = _json(site, customer)  # the projection moves with the clock: before or after
        assert v.status == 200
        assert v.headers["content-type"].startswith("text/html")
        assert v.headers["content-security-policy"].startswith("default-src 'none'")
        meter = '[data-meter="requests"]'
        assert _text(v.page, f'{meter} [data-field="used"]') == str(n)
        assert _text(v.page, f'{meter} [data-field="remaining"]') == str(100 - n)
        assert _text(v.page, '[data-field="customer"]') == customer
        assert _text(v.page, '[data-field="charges-so-far"]') == f"USD {doc['charges_so_far']}"
        assert _text(v.page, '[data-field="projected-total"]') in {
            f"USD {d['projected_total']}" for d in (doc, after)
        }
        bars = v.page.locator(f"{meter} rect.bar").evaluate_all(
            "els => els.map(e => Number(e.dataset.units))"
        )
        assert sum(bars) == n
        assert v.errors == []
        v.page.context.close()


def test_two_customers_each_see_only_their_own_invoices(browser: Any, site: Site) -> None:
    """Two customers each see only their own invoices.

    Hana's page lists hana's invoice (HTML, CSV, JSON links that open) and nothing of ivan's;
    ivan's invoice asked for with hana's credential is the same 404 as a made-up number.
    """
    v = _visit(browser, site, "hana")
    rows = v.page.locator("tr[data-invoice]").evaluate_all("els => els.map(e => e.dataset.invoice)")
    assert rows == [site.invoices["hana"]]
    assert "ivan" not in v.page.content()
    v.page.locator(f'tr[data-invoice="{site.invoices["hana"]}"] a', has_text="HTML").click()
    v.page.wait_for_load_state()
    assert site.invoices["hana"] in v.page.title()
    url = f"{site.stack.base_url}/v1/invoices/{site.invoices['hana']}"
    doc, csv = v.page.request.get(url + ".json"), v.page.request.get(url + ".csv")
    assert (doc.status, csv.status) == (200, 200)
    assert doc.json()["number"] == site.invoices["hana"]
    assert doc.json()["customer"] == "hana"
    assert csv.text().splitlines()[-1].split(",")[-4] == doc.json()["total"]  # the total row
    other = v.page.request.get(f"{site.stack.base_url}/v1/invoices/{site.invoices['ivan']}.json")
    made_up = v.page.request.get(f"{site.stack.base_url}/v1/invoices/TH-1999-01-nobody.json")
    assert other.status == made_up.status == 404
    assert other.json() == made_up.json()
    assert v.errors == []
    v.page.context.close()
    theirs = _visit(browser, site, "ivan").page
    assert theirs.locator("tr[data-invoice]").evaluate_all(
        "els => els.map(e => e.dataset.invoice)"
    ) == [site.invoices["ivan"]]
    assert "hana" not in theirs.content()
    theirs.context.close()


def test_shadow_amounts_equal_simulate_of_the_shadow_plan(browser: Any, site: Site) -> None:
    """Shadow amounts are what `tollhouse simulate --plan <shadow>` computes.

    /v1/usage (JSON and page) and `bill --preview` show the shadow plan's amounts, equal to
    `tollhouse simulate --plan next`; the real amounts are unchanged.
    """
    label = _month()
    sim = _cli(site.stack, "simulate", "--period", label, "--plan", "next", "--json")
    assert sim.returncode == 0, sim.stderr[-2000:]
    candidates = {s["customer"]: s for s in json.loads(sim.stdout)}
    preview = _cli(site.stack, "bill", "--period", label, "--preview")
    assert preview.returncode == 0, preview.stderr[-2000:]
    for customer, n in SENT.items():
        expected = SHADOW_BASE + n * SHADOW_UNIT
        assert Decimal(candidates[customer]["candidate_total"]) == expected
        doc = _json(site, customer)
        assert doc["shadow"]["plan"] == "next"
        assert Decimal(doc["shadow"]["charges_so_far"]) == expected
        assert Decimal(doc["charges_so_far"]) == BASE + (n - INCLUDED) * UNIT  # real: unchanged
        shadow = next(
            ln
            for ln in preview.stdout.splitlines()
            if ln.startswith(f"SHADOW TH-{label}-{customer} ")
        )
        assert f"under next: USD {expected}" in shadow
        assert shadow.endswith("not billed")
        v = _visit(browser, site, customer)
        assert _text(v.page, '[data-field="shadow-charges"]') == f"USD {expected}"
        assert v.errors == []
        v.page.context.close()
