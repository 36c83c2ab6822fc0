"""Prepaid credits on invoices: applied per grant and in total, remaining, amount due; exact.

Grants are made through the store's service (the admin API and CLI's path), usage through the
meter contract, invoices by the real billing job over a SQLite ledger; the store runs on both
backends (``store_url``). Golden files of invoices with credits are in ``golden/credits``;
regenerate after an intended change (and review the diff):
    TOLLHOUSE_REGEN_GOLDEN=1 .venv/bin/pytest -q tests/unit/test_billing_credits.py -k golden
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support import Clock
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
from tests.support.billing_store import config, in_store, invoice_events, migrated_store_url  # noqa: F401 - fixture store_url
from tollhouse.billing.customer_invoices import list_invoices
from tollhouse.billing.invoice_credits import FEES, AppliedCredits, apply_credits, charge_buckets
from tollhouse.billing.job import BillingResult, run_billing
from tollhouse.billing.ledger import open_ledger
from tollhouse.billing.subscriptions import ConfigSubscriptions
from tollhouse.config import Config
from tollhouse.store import StoreService
from tollhouse.store.credit_models import CreditGrant
from tollhouse.subscriber import Subscriber
from tollhouse.webhooks import Outbox

DAY = 86400
GOLDEN = Path(__file__).parent / "golden" / "credits"
FEB_2027 = JAN_2027 + 31 * DAY


def _customer(
    cid: str = "delta", plan: str = "team"
) -> Callable[[StoreService], Awaitable[object]]:
    return lambda s: s.create_customer(
        actor="t", name=cid, plan=plan, customer_id=cid, anchor=date(2026, 11, 1)
    )


def _grant(url: str, at: float, amount: int, **kw: Any) -> CreditGrant:
    out: list[CreditGrant] = []

    async def go(s: StoreService) -> None:
        out.append(
            await s.grant_credit(
                kw.pop("customer", "delta"),
                actor="t",
                amount=amount,
                currency=kw.pop("currency", "USD"),
                **kw,
            )
        )

    in_store(url, Clock(at), go)
    return out[0]


def _usage(tmp: Path, start: float, n: int, units: dict[str, int], cid: str = "delta") -> None:
    write_meter(
        open_meter(tmp / "meter.db"),
        [record(f"{cid}-{start}-{i}", cid, start + 3600 + i, units) for i in range(n)],
    )


def _run(
    tmp: Path, url: str, period: str, now: float, *, preview: bool = False, out: str = "out"
) -> tuple[BillingResult, dict[str, Any]]:
    res = run_billing(
        config(tmp, url), period=period, out_dir=tmp / out, preview=preview, clock=lambda: now
    )
    assert res.ok, res.problems
    inv = next(i for i in res.invoices if i.customer == "delta")
    path = next(f for f in inv.files if f.suffix == ".json")
    return res, json.loads(path.read_text())


def _applied(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [
        (g["grant"], g["available"], g["applied"], g["remaining"])
        for g in doc["credits"]["applied"]
    ]


def test_credits_applied_and_remaining_exact(tmp_path: Path, store_url: str) -> None:
    """Two grants apply in priority order, to the minor unit; amount due is total - applied."""
    in_store(store_url, Clock(NOV_2026 + 60), _customer())
    first = _grant(store_url, NOV_2026 + 60, 555, priority=1, source="promotional")
    second = _grant(store_url, NOV_2026 + 61, 1234)
    _usage(tmp_path, NOV_2026, 120, {"requests": 1})  # team: 19.99 + 70 x 0.003 = 20.20
    res, doc = _run(tmp_path, store_url, "2026-11", DEC_2026 + DAY)
    assert doc["total"] == "20.20"
    assert _applied(doc) == [
        (first.id, "5.55", "5.55", "0.00"),
        (second.id, "12.34", "12.34", "0.00"),
    ]
    assert (doc["credits"]["applied_total"], doc["amount_due"]) == ("17.89", "2.31")
    assert doc["credits"]["remaining_total"] == "0.00"
    assert str(res.invoices[0].amount_due) == "2.31"
    ledger = open_ledger(config(tmp_path, store_url).billing.ledger)
    try:
        assert ledger.credits_used("delta") == {first.id: 555, second.id: 1234}
    finally:
        ledger.close()


def test_two_periods_draw_down_the_same_grant(tmp_path: Path, store_url: str) -> None:
    """November uses 20.20 of a 30.00 grant; December gets the 9.80 left, then pays the rest."""
    in_store(store_url, Clock(NOV_2026 + 60), _customer())
    g = _grant(store_url, NOV_2026 + 60, 3000)
    _usage(tmp_path, NOV_2026, 120, {"requests": 1})
    _, nov = _run(tmp_path, store_url, "2026-11", DEC_2026 + DAY)
    assert _applied(nov) == [(g.id, "30.00", "20.20", "9.80")]
    assert (nov["amount_due"], nov["credits"]["remaining_total"]) == ("0.00", "9.80")
    _usage(tmp_path, DEC_2026, 150, {"requests": 1})  # 19.99 + 100 x 0.003 = 20.29
    _, dec = _run(tmp_path, store_url, "2026-12", JAN_2027 + DAY)
    assert dec["total"] == "20.29"
    assert _applied(dec) == [(g.id, "9.80", "9.80", "0.00")]
    assert (dec["amount_due"], dec["credits"]["remaining_total"]) == ("10.49", "0.00")
    _, jan = _run(tmp_path, store_url, "2027-01", FEB_2027 + DAY)
    assert (jan["credits"]["applied"], jan["amount_due"]) == ([], jan["total"])


def test_expired_grant_is_never_applied(tmp_path: Path, store_url: str) -> None:
    """A grant expiring mid-November is listed as not applied; one expiring at the end applies."""
    in_store(store_url, Clock(NOV_2026 + 60), _customer())
    mid = _grant(store_url, NOV_2026 + 60, 5000, priority=1, expires_at=NOV_2026 + 15 * DAY)
    end = _grant(store_url, NOV_2026 + 60, 700, expires_at=DEC_2026)
    _usage(tmp_path, NOV_2026, 120, {"requests": 1})
    _, nov = _run(tmp_path, store_url, "2026-11", DEC_2026 + DAY)
    assert _applied(nov) == [(end.id, "7.00", "7.00", "0.00")]
    assert [(n["grant"], n["reason"]) for n in nov["credits"]["not_applied"]] == [
        (mid.id, "expired at 2026-11-16T00:00:00Z, before the period ended")
    ]
    assert nov["amount_due"] == "13.20"
    _, dec = _run(tmp_path, store_url, "2026-12", JAN_2027 + DAY)
    assert (dec["credits"]["applied"], dec["credits"]["not_applied"]) == ([], [])
    assert dec["amount_due"] == dec["total"] == "19.99"


def test_voided_grant_is_not_applied_after_the_void(tmp_path: Path, store_url: str) -> None:
    """Issued before the void, November keeps its credit; December, built after, gets none."""
    in_store(store_url, Clock(NOV_2026 + 60), _customer())
    g = _grant(store_url, NOV_2026 + 60, 5000)
    _usage(tmp_path, NOV_2026, 120, {"requests": 1})
    _, nov = _run(tmp_path, store_url, "2026-11", DEC_2026 + DAY)
    assert _applied(nov) == [(g.id, "50.00", "20.20", "29.80")]
    in_store(
        store_url, Clock(DEC_2026 + 10 * DAY), lambda s: s.void_grant("delta", g.id, actor="t")
    )
    _, dec = _run(tmp_path, store_url, "2026-12", JAN_2027 + DAY)
    assert dec["credits"]["applied"] == []
    assert [(n["grant"], n["reason"]) for n in dec["credits"]["not_applied"]] == [
        (g.id, "voided at 2026-12-11T00:00:00Z")
    ]
    assert (dec["amount_due"], dec["credits"]["remaining_total"]) == ("19.99", "0.00")
    _, again = _run(tmp_path, store_url, "2026-11", JAN_2027 + 2 * DAY, out="again")
    assert again == nov  # the issued invoice is final: the void does not rewrite it


def test_grant_voided_before_issue_is_not_applied(tmp_path: Path, store_url: str) -> None:
    """A grant voided after the period ended but before the invoice is built does not apply."""
    in_store(store_url, Clock(NOV_2026 + 60), _customer())
    g = _grant(store_url, NOV_2026 + 60, 5000)
    in_store(store_url, Clock(DEC_2026 + 3600), lambda s: s.void_grant("delta", g.id, actor="t"))
    _usage(tmp_path, NOV_2026, 120, {"requests": 1})
    _, before = _run(tmp_path, store_url, "2026-11", DEC_2026 + 60, preview=True)
    assert _applied(before) == [(g.id, "50.00", "20.20", "29.80")]  # as of before the void
    _, nov = _run(tmp_path, store_url, "2026-11", DEC_2026 + DAY)
    assert (nov["credits"]["applied"], nov["amount_due"]) == ([], "20.20")


def test_scoped_grant_only_covers_its_meters(tmp_path: Path, store_url: str) -> None:
    """A tokens-only grant pays the tokens line and nothing else; a feature-scoped one is listed."""
    in_store(store_url, Clock(NOV_2026 + 60), _customer(plan="pro"))
    tokens = _grant(store_url, NOV_2026 + 60, 1000, meters=["tokens"])
    feat = _grant(store_url, NOV_2026 + 60, 1000, features=["search"])
    _usage(tmp_path, NOV_2026, 30, {"requests": 50, "tokens": 100})
    _, doc = _run(tmp_path, store_url, "2026-11", DEC_2026 + DAY)
    line = {ln["meter"]: ln["amount"] for ln in doc["lines"]}
    assert (line["tokens"], line["requests"], doc["total"]) == ("1.50", "5.00", "55.50")
    assert _applied(doc) == [(tokens.id, "10.00", "1.50", "8.50")]
    assert [(n["grant"], n["reason"]) for n in doc["credits"]["not_applied"]] == [
        (feat.id, "scoped to features; an invoice has no per-feature amounts")
    ]
    assert doc["amount_due"] == "54.00"


def test_grant_in_another_currency_is_listed_and_logged(
    tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A EUR grant is not applied to a USD invoice: the invoice and the log both say so."""
    caplog.set_level(logging.INFO, logger="tollhouse")
    in_store(store_url, Clock(NOV_2026 + 60), _customer())
    eur = _grant(store_url, NOV_2026 + 60, 5000, currency="EUR")
    _usage(tmp_path, NOV_2026, 120, {"requests": 1})
    _, doc = _run(tmp_path, store_url, "2026-11", DEC_2026 + DAY)
    assert doc["credits"]["not_applied"] == [
        {
            "grant": eur.id,
            "currency": "EUR",
            "amount": "50.00",
            "reason": "in EUR; this invoice is in USD",
        }
    ]
    assert (doc["credits"]["applied_total"], doc["amount_due"]) == ("0.00", "20.20")
    logged = [
        r.__dict__.get("fields", {})
        for r in caplog.records
        if r.getMessage() == "billing.credit_not_applied"
    ]
    assert [(f["grant"], f["invoice"]) for f in logged] == [(eur.id, "TH-2026-11-delta")]


def test_rerun_gives_the_same_invoice(tmp_path: Path, store_url: str) -> None:
    """Live consumption counters and the clock do not change an invoice: same bytes, every run."""
    in_store(store_url, Clock(NOV_2026 + 60), _customer())
    g = _grant(store_url, NOV_2026 + 60, 1500)
    _usage(tmp_path, NOV_2026, 120, {"requests": 1})
    twin = tmp_path / "twin"  # the same meter, a fresh ledger, billed a week later
    twin.mkdir()
    _usage(twin, NOV_2026, 120, {"requests": 1})
    _, first = _run(tmp_path, store_url, "2026-11", DEC_2026 + DAY)
    in_store(
        store_url, Clock(DEC_2026 + 2 * DAY), lambda s: s.add_consumed([(g.id, 1_400_000)])
    )  # replicas flushed live spend
    _, second = _run(twin, store_url, "2026-11", DEC_2026 + 9 * DAY)
    _, again = _run(tmp_path, store_url, "2026-11", DEC_2026 + 9 * DAY, out="again")
    name = "TH-2026-11-delta.json"
    assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert first == second == again
    assert _applied(first) == [(g.id, "15.00", "15.00", "0.00")]
    assert first["amount_due"] == "5.20"


def test_every_output_shows_the_credits(tmp_path: Path, store_url: str) -> None:
    """CSV: a negative row per grant, due, remaining; HTML: the due headline; the event: due."""
    in_store(store_url, Clock(NOV_2026 + 60), _customer())
    in_store(
        store_url,
        Clock(NOV_2026 + 60),
        lambda s: Outbox(s.backend, clock=Clock(NOV_2026)).create_endpoint(
            actor="t", url="https://hooks.test/", events=["invoice.issued"]
        ),
    )
    g = _grant(store_url, NOV_2026 + 60, 1000)
    _usage(tmp_path, NOV_2026, 120, {"requests": 1})
    res, _ = _run(tmp_path, store_url, "2026-11", DEC_2026 + DAY)
    files = {f.suffix: f.read_text() for f in res.invoices[0].files}
    rows = [r.split(",") for r in files[".csv"].splitlines()]
    tail = [(r[0], r[8]) for r in rows[-5:]]
    assert tail == [
        ("total", "20.20"),
        ("credit", "-10.00"),
        ("credits_applied", "-10.00"),
        ("amount_due", "10.20"),
        ("credits_remaining", "0.00"),
    ]
    assert g.id in rows[-4][1]
    html = files[".html"]
    assert "<span>Amount due for 2026-11</span><strong>USD&nbsp;10.20</strong>" in html
    assert f"Prepaid credit <code>{g.id}</code>" in html
    assert "&minus;USD&nbsp;10.00" in html
    [event] = invoice_events(store_url)
    assert event["payload"]["data"] == {  # type: ignore[index]
        "invoice": "TH-2026-11-delta",
        "period": "2026-11",
        "currency": "USD",
        "total": "20.20",
        "amount_due": "10.20",
    }


def _g(
    gid: str,
    amount: int,
    *,
    priority: int = 10,
    currency: str = "USD",
    meters: frozenset[str] = frozenset(),
    created: float = NOV_2026,
    effective: float = NOV_2026,
    expires: float | None = None,
) -> CreditGrant:
    return CreditGrant(
        gid,
        "delta",
        amount,
        currency,
        priority,
        effective,
        expires,
        meters,
        frozenset(),
        "purchase",
        None,
        created,
    )


def _apply(
    grants: list[CreditGrant],
    buckets: dict[str, str],
    *,
    currency: str = "USD",
    used: dict[str, int] | None = None,
) -> AppliedCredits:
    money = {k: Decimal(v) for k, v in buckets.items()}
    return apply_credits(
        grants,
        currency=currency,
        start=NOV_2026,
        end=DEC_2026,
        as_of=DEC_2026 + DAY,
        total=sum(money.values(), Decimal(0)),
        buckets=money,
        used_before=used or {},
    )


def test_grants_apply_in_consumption_order_within_their_scope() -> None:
    """Priority first; an unscoped grant pays fees first, a scoped one only its meter's lines."""
    res = _apply(
        [_g("wide", 10_000, priority=20), _g("tok", 300, priority=5, meters=frozenset({"tokens"}))],
        {FEES: "49.00", "requests": "5.00", "tokens": "4.10"},
    )
    assert res.applied == (("tok", 300), ("wide", 5510))
    assert _applied({"credits": res.document}) == [
        ("tok", "3.00", "3.00", "0.00"),
        ("wide", "100.00", "55.10", "44.90"),
    ]
    assert (res.amount_due, res.document["remaining_total"]) == (Decimal("0.00"), "44.90")


def test_earlier_invoices_and_late_usage_are_accounted() -> None:
    """What earlier invoices applied is gone; a scoped grant also covers its meter's adjustments."""
    buckets = charge_buckets(
        Decimal("19.99"),
        [{"meter": "requests", "amount": "0.21"}],
        [{"meter": "requests", "amount": "0.40"}],
    )
    assert buckets == {FEES: Decimal("19.99"), "requests": Decimal("0.61")}
    scoped = _g("req", 1000, meters=frozenset({"requests"}))
    res = _apply(
        [scoped, _g("spent", 500)],
        {k: str(v) for k, v in buckets.items()},
        used={"req": 950, "spent": 500},
    )
    assert res.applied == (("req", 50),)
    assert _applied({"credits": res.document}) == [("req", "0.50", "0.50", "0.00")]
    assert res.amount_due == Decimal("20.10")


def test_zero_decimal_currency_and_grants_out_of_the_period() -> None:
    """JPY amounts are whole yen; future, expired-earlier and later-granted grants are handled."""
    res = _apply(
        [
            _g("yen", 700, currency="JPY"),
            _g("future", 900, currency="JPY", effective=DEC_2026),
            _g("old", 900, currency="JPY", expires=NOV_2026 - 1),
            _g("late", 900, currency="JPY", created=DEC_2026 + 2 * DAY),
        ],
        {FEES: "1000", "requests": "234"},
        currency="JPY",
    )
    assert _applied({"credits": res.document}) == [("yen", "700", "700", "0")]
    assert res.amount_due == Decimal("534")
    assert [(n["grant"], n["reason"]) for n in res.document["not_applied"]] == [
        ("late", "granted at 2026-12-03T00:00:00Z, after this invoice was built")
    ]


class _WithGrants:
    """The config's subscriptions, each given fixed grants (stable ids: golden files)."""

    def __init__(self, cfg: Config, grants: dict[str, tuple[CreditGrant, ...]]) -> None:
        self._subs, self._grants = ConfigSubscriptions(cfg), grants

    def customers(self) -> list[str]:
        return list(self._subs.customers())

    def subscription(self, customer: str) -> Subscriber | None:
        sub = self._subs.subscription(customer)
        return None if sub is None else replace(sub, credit_grants=self._grants.get(customer, ()))


def _fixed_grants() -> dict[str, tuple[CreditGrant, ...]]:
    def g(gid: str, cust: str, amount: int, currency: str = "USD", **kw: Any) -> CreditGrant:
        return replace(
            _g(
                gid,
                amount,
                currency=currency,
                created=NOV_2026 - DAY,
                effective=NOV_2026 - DAY,
                **kw,
            ),
            customer=cust,
        )

    return {
        "acme": (
            replace(
                g(
                    "cg_promo_tokens",
                    "acme",
                    5000,
                    priority=1,
                    meters=frozenset({"tokens"}),
                    expires=NOV_2026 + 120 * DAY,
                ),
                source="promotional",
            ),
            g("cg_purchase", "acme", 20000),
            g("cg_eur", "acme", 1000, "EUR"),
            g("cg_expired", "acme", 3000, expires=NOV_2026 + 19 * DAY),
        ),
        "gamma": (g("cg_big", "gamma", 100_000, "EUR"), g("cg_usd", "gamma", 500)),
    }


def test_golden_invoices_with_credits(tmp_path: Path) -> None:
    """The golden usage set with fixed grants bills to the checked-in files, byte for byte."""
    cfg = make_config(tmp_path)
    write_meter(open_meter(tmp_path / "meter.db"), fixed_usage())
    res = run_billing(
        cfg,
        period="2026-11",
        out_dir=tmp_path / "out",
        preview=False,
        clock=lambda: JAN_2027,
        subscriptions=_WithGrants(cfg, _fixed_grants()),
    )
    assert res.ok, res.problems
    docs = {
        i.customer: json.loads((tmp_path / "out" / f"{i.number}.json").read_text())
        for i in res.invoices
    }
    acme, gamma = docs["acme"], docs["gamma"]
    assert acme["total"] == "266.54"
    assert _applied(acme) == [
        ("cg_promo_tokens", "50.00", "50.00", "0.00"),
        ("cg_purchase", "200.00", "200.00", "0.00"),
    ]
    assert (acme["credits"]["applied_total"], acme["amount_due"]) == ("250.00", "16.54")
    assert [n["grant"] for n in acme["credits"]["not_applied"]] == ["cg_expired", "cg_eur"]
    assert _applied(gamma) == [("cg_big", "1000.00", "31.06", "968.94")]
    assert (gamma["amount_due"], gamma["credits"]["remaining_total"]) == ("0.00", "968.94")
    assert "credits" not in docs["beta"]
    assert "amount_due" not in docs["beta"]
    produced = {
        p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir()) if "beta" not in p.name
    }
    if os.environ.get("TOLLHOUSE_REGEN_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        for name, data in produced.items():
            (GOLDEN / name).write_bytes(data)
    assert produced == {p.name: p.read_bytes() for p in sorted(GOLDEN.glob("TH-*"))}


def test_customer_invoice_list_shows_amount_due(tmp_path: Path, store_url: str) -> None:
    """The customer's invoice list (``GET /v1/usage``) gives amount_due beside total."""
    in_store(store_url, Clock(NOV_2026 + 60), _customer())
    _grant(store_url, NOV_2026 + 60, 1000)
    _usage(tmp_path, NOV_2026, 120, {"requests": 1})
    _run(tmp_path, store_url, "2026-11", DEC_2026 + DAY)
    [link] = list_invoices(config(tmp_path, store_url).billing.ledger, "delta")
    assert (link.total, link.amount_due) == (Decimal("20.20"), Decimal("10.20"))
    assert {k: v for k, v in link.to_json().items() if k != "links"} == {
        "number": "TH-2026-11-delta",
        "period": "2026-11",
        "issue_date": "2026-12-01",
        "currency": "USD",
        "total": "20.20",
        "amount_due": "10.20",
    }
    assert "amount_due" not in replace(link, amount_due=None).to_json()
