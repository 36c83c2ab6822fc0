"""The usage page's pieces: shadow_price validation, Accept negotiation, escaping and the CSP."""

from __future__ import annotations

import base64
import hashlib
import re
from decimal import Decimal

import pytest

from tollhouse.billing.customer_http import wants_html
from tollhouse.billing.usage import MeterUsage, UsageReport
from tollhouse.billing.usage_page import content_security_policy, render_usage_page
from tollhouse.config import ConfigError, parse_config

PRICED = {"price": {"meters": {"requests": {"unit_price": "0.01"}}}}


@pytest.mark.parametrize(
    ("shadow", "plans", "message"),
    [
        ("gold", {}, "unknown plan 'gold'"),
        ("free", {}, "must name another plan"),
        ("bare", {"bare": {}}, "plan 'bare' has no price"),
    ],
)
def test_bad_shadow_price_names_its_dotted_path(
    shadow: str, plans: dict[str, object], message: str
) -> None:
    """shadow_price: must name another, priced plan; the error names plans.X.shadow_price."""
    with pytest.raises(ConfigError) as exc:
        parse_config({"plans": {"free": {**PRICED, "shadow_price": shadow}, **plans}})
    assert [(p, m) for p, m in exc.value.problems if p == "plans.free.shadow_price"]
    assert any(message in m for _, m in exc.value.problems)


def test_browsers_get_html_and_api_clients_json() -> None:
    """text/html preferred (a browser's Accept) is the page; */*, JSON or nothing is JSON."""
    assert wants_html("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
    assert not wants_html("*/*")
    assert not wants_html("")
    assert not wants_html("application/json")
    assert not wants_html("text/html;q=0.5, application/json")


def test_page_escapes_report_values_and_csp_allows_only_its_style() -> None:
    """A hostile customer id is escaped; the CSP's style hash is the page's own style block."""
    hostile = '<img src=x onerror="alert(1)">'
    r = UsageReport(
        hostile,
        "free",
        "2026-12",
        1796083200,
        1798761600,
        1796083200 + 90000,
        "USD",
        Decimal("5.00"),
        (MeterUsage("requests", 7, 10, 3, 0, 0, Decimal("0.07"), 70),),
        Decimal(0),
    )
    html = render_usage_page(r)
    assert hostile not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    css = re.search(r"<style>(.*?)</style>", html, re.DOTALL)
    assert css is not None
    digest = base64.b64encode(hashlib.sha256(css.group(1).encode()).digest()).decode()
    csp = content_security_policy(html)
    assert csp.startswith("default-src 'none'; ")
    assert f"style-src 'sha256-{digest}'" in csp
    assert "<script" not in html


def test_invoice_list_shows_amount_due_with_credits() -> None:
    """An invoice with prepaid credits shows its amount due under the total; others do not."""
    from tollhouse.billing.usage import InvoiceLink

    links = (
        InvoiceLink(
            "TH-2026-11-a", "2026-11", "2026-12-01", "USD", Decimal("20.20"), Decimal("2.31")
        ),
        InvoiceLink("TH-2026-10-a", "2026-10", "2026-11-01", "USD", Decimal("19.99")),
    )
    r = UsageReport(
        "a",
        "free",
        "2026-12",
        1796083200,
        1798761600,
        1796083200 + 90000,
        "USD",
        Decimal("5.00"),
        (),
        Decimal(0),
        invoices=links,
    )
    rows = re.findall(r'<tr data-invoice="([^"]+)">(.*?)</tr>', render_usage_page(r))
    assert [(n, 'data-field="amount_due"' in row) for n, row in rows] == [
        ("TH-2026-11-a", True),
        ("TH-2026-10-a", False),
    ]
    assert (
        'USD&nbsp;20.20<br><span data-field="amount_due">due USD&nbsp;2.31</span>' in (rows[0][1])
    )
