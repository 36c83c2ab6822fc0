"""/admin/customers/{id}/credits, /credits/recharge and /spend-cap over real HTTP, on both stores.

The admin sub-app runs on a free port against SQLite and PostgreSQL with a settable clock;
consumption is added the way replicas flush it (``StoreService.add_consumed``, 1/1000 minor units).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.servers import free_port
from tests.support.admin import TOKEN, Admin
from tests.support.store import T0, Clock, fresh_pg_url
from tollhouse.admin import admin_routes, read_token_sha256
from tollhouse.store import StoreService, migrate, open_store

ACTOR = "admin:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
CURRENCIES = {"free": None, "pro": "EUR"}  # plan -> its price's currency (free: no price)


@dataclass
class Env:
    """The running admin API, its store service and its clock."""

    api: Admin
    svc: StoreService
    clock: Clock

    async def ok(
        self, method: str, path: str, body: object = None, status: int = 200
    ) -> dict[str, Any]:
        """Call and assert the status; return the JSON body."""
        got, _, data = await self.api.call(method, path, body)
        assert got == status, data
        assert isinstance(data, dict)
        return data

    async def problem(self, method: str, path: str, body: object, status: int, code: str) -> str:
        """Call, assert a problem+json of ``status`` and ``code``; return its detail."""
        got, headers, data = await self.api.call(method, path, body)
        assert isinstance(data, dict)
        assert (got, data["code"]) == (status, code), (path, body, data)
        assert headers["Content-Type"].startswith("application/problem+json")
        return str(data.get("detail", ""))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store URL of each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/store.db"
    return fresh_pg_url(request.getfixturevalue("postgres_server"))


@pytest.fixture
async def env(url: str, tmp_path: Path) -> AsyncIterator[Env]:
    """The admin API (catalog: plans free/pro, meter requests) with customer ``acme`` on free."""
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN)
    await migrate(url)
    clock = Clock()
    svc = StoreService(
        await open_store(url), clock=clock, plans={"free", "pro"}, meters={"requests"}
    )
    root = web.Application()
    root.add_subapp("/admin", admin_routes(svc, read_token_sha256(token_file), CURRENCIES.get))
    runner = web.AppRunner(root)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        e = Env(Admin(f"http://127.0.0.1:{port}/admin", s, url), svc, clock)
        await e.ok(
            "POST",
            "/customers",
            {"id": "acme", "name": "Acme", "plan": "free", "anchor": "2025-11-01"},
            201,
        )
        yield e
    await runner.cleanup()
    await svc.backend.close()


async def test_grant_then_list_shows_it_with_spent_left_and_balance(env: Env) -> None:
    """A grant is 201 with its fields; the list shows it with consumption and the balance.

    Spent and left are shown rounded down to the minor unit (and exact in ``*_milli``); the
    balance is rounded once from the exact sum, so two half-spent units make one whole unit.
    """
    g = await env.ok(
        "POST",
        "/customers/acme/credits",
        {
            "amount": 100,
            "currency": "USD",
            "priority": 1,
            "source": "promotional",
            "scope": {"meters": ["requests"]},
            "expires_at": T0 + 3600,
        },
        201,
    )
    assert (g["amount"], g["currency"], g["priority"], g["source"]) == (
        100,
        "USD",
        1,
        "promotional",
    )
    assert g["scope"] == {"meters": ["requests"], "features": []}
    assert (g["effective_at"], g["expires_at"], g["voided_at"]) == (T0, T0 + 3600, None)
    assert (g["consumed"], g["remaining"], g["usable"]) == (0, 100, True)
    h = await env.ok("POST", "/customers/acme/credits", {"amount": 250, "currency": "USD"}, 201)
    await env.svc.add_consumed([(g["id"], 40_500), (h["id"], 500)])  # 40.5 and 0.5 minor units
    listed = await env.ok("GET", "/customers/acme/credits")
    assert [i["id"] for i in listed["items"]] == [g["id"], h["id"]]  # priority 1 first
    first, second = listed["items"]
    assert (first["consumed"], first["remaining"]) == (40, 59)
    assert (first["consumed_milli"], first["remaining_milli"]) == (40_500, 59_500)
    assert (second["consumed"], second["remaining"]) == (0, 249)
    assert listed["balance"] == {"amount": 309, "amount_milli": 309_000, "currency": "USD"}
    assert listed["balances"] == [listed["balance"]]
    bal = await env.ok("GET", "/customers/acme/credits/balance")
    assert (bal["customer"], bal["amount"], bal["currency"]) == ("acme", 309, "USD")


async def test_void_twice_is_409_and_the_voided_grant_leaves_the_balance(env: Env) -> None:
    """Void is 200 with voided_at; the balance drops; a second void is 409 already_voided."""
    keep = await env.ok("POST", "/customers/acme/credits", {"amount": 70, "currency": "USD"}, 201)
    g = await env.ok("POST", "/customers/acme/credits", {"amount": 30, "currency": "USD"}, 201)
    env.clock.now = T0 + 5
    voided = await env.ok("POST", f"/customers/acme/credits/{g['id']}/void")
    assert (voided["voided_at"], voided["usable"], voided["remaining"]) == (T0 + 5, False, 30)
    assert (await env.ok("GET", "/customers/acme/credits/balance"))["amount"] == 70
    await env.problem(
        "POST", f"/customers/acme/credits/{g['id']}/void", None, 409, "already_voided"
    )
    await env.problem("POST", "/customers/acme/credits/cg_nope/void", None, 404, "not_found")
    await env.ok("POST", "/customers", {"id": "other", "name": "O", "plan": "free"}, 201)
    await env.problem(
        "POST", f"/customers/other/credits/{keep['id']}/void", None, 404, "not_found"
    )  # another customer's grant
    items = (await env.ok("GET", "/customers/acme/credits"))["items"]
    assert {i["id"]: i["usable"] for i in items} == {keep["id"]: True, g["id"]: False}


async def test_expired_and_future_grants_are_not_in_the_balance(env: Env) -> None:
    """A grant counts from effective_at until expires_at (exclusive), and never after."""
    await env.ok("POST", "/customers/acme/credits", {"amount": 100, "currency": "USD"}, 201)
    await env.ok(
        "POST",
        "/customers/acme/credits",
        {"amount": 40, "currency": "USD", "expires_at": T0 + 60},
        201,
    )
    await env.ok(
        "POST",
        "/customers/acme/credits",
        {"amount": 5, "currency": "USD", "effective_at": T0 + 30},
        201,
    )
    balance = "/customers/acme/credits/balance"
    assert (await env.ok("GET", balance))["amount"] == 140
    env.clock.now = T0 + 30
    assert (await env.ok("GET", balance))["amount"] == 145
    env.clock.now = T0 + 60
    assert (await env.ok("GET", balance))["amount"] == 105
    listed = await env.ok("GET", "/customers/acme/credits")
    expired = [i for i in listed["items"] if i["expires_at"] == T0 + 60]
    assert [(i["usable"], i["remaining"]) for i in expired] == [(False, 40)]


async def test_balance_is_in_the_plans_currency_and_other_currencies_are_listed(env: Env) -> None:
    """On a EUR plan the balance counts EUR grants only; ``balances`` shows every currency."""
    await env.ok(
        "POST", "/customers/acme/credits", {"amount": 500, "currency": "USD", "priority": 0}, 201
    )
    assert (await env.ok("GET", "/customers/acme/credits/balance"))["currency"] == "USD"
    await env.ok("POST", "/customers/acme/plan", {"plan": "pro"})
    bal = await env.ok("GET", "/customers/acme/credits/balance")
    assert (bal["amount"], bal["currency"]) == (0, "EUR")
    await env.ok("POST", "/customers/acme/credits", {"amount": 20, "currency": "EUR"}, 201)
    bal = await env.ok("GET", "/customers/acme/credits/balance")
    assert (bal["amount"], bal["currency"]) == (20, "EUR")
    assert [(b["currency"], b["amount"]) for b in bal["balances"]] == [("EUR", 20), ("USD", 500)]


async def test_no_grants_is_a_zero_balance_and_unknown_customer_is_404(env: Env) -> None:
    """Without grants the balance is 0 with no currency; an unknown customer is 404."""
    bal = await env.ok("GET", "/customers/acme/credits/balance")
    assert (bal["amount"], bal["currency"], bal["balances"]) == (0, None, [])
    for path in ("/credits", "/credits/balance", "/credits/recharge", "/spend-cap"):
        await env.problem("GET", "/customers/nobody" + path, None, 404, "not_found")
    await env.problem(
        "POST", "/customers/nobody/credits", {"amount": 1, "currency": "USD"}, 404, "not_found"
    )


BAD_GRANTS = [
    ({"currency": "USD"}, "amount"),
    ({"amount": "100", "currency": "USD"}, "amount"),
    ({"amount": 0, "currency": "USD"}, "amount"),
    ({"amount": -5, "currency": "USD"}, "amount"),
    ({"amount": 1.5, "currency": "USD"}, "amount"),
    ({"amount": True, "currency": "USD"}, "amount"),
    ({"amount": 10**12 + 1, "currency": "USD"}, "amount"),
    ({"amount": 1, "currency": "usd"}, "currency"),
    ({"amount": 1}, "currency"),
    ({"amount": 1, "currency": "USD", "priority": 1001}, "priority"),
    ({"amount": 1, "currency": "USD", "source": "gift"}, "source"),
    ({"amount": 1, "currency": "USD", "scope": {"meters": "requests"}}, "scope.meters"),
    ({"amount": 1, "currency": "USD", "scope": {"features": ["a b"]}}, "scope.features"),
    ({"amount": 1, "currency": "USD", "scope": {"plans": []}}, "scope"),
    ({"amount": 1, "currency": "USD", "effective_at": "tomorrow"}, "effective_at"),
    ({"amount": 1, "currency": "USD", "expires_at": T0 - 1}, "expires_at"),
    (
        {"amount": 1, "currency": "USD", "effective_at": T0 + 10, "expires_at": T0 + 10},
        "expires_at",
    ),
]


async def test_bad_grant_input_is_422_naming_the_field(env: Env) -> None:
    """Every bad field of a grant is a 422 ``invalid`` whose detail names it; nothing is granted.

    (422 is the admin API's status for a well-formed body with a bad value; 400 is for a body
    that is not a JSON object.)
    """
    for body, field in BAD_GRANTS:
        detail = await env.problem("POST", "/customers/acme/credits", body, 422, "invalid")
        assert detail.startswith(field), (body, detail)
    detail = await env.problem(
        "POST",
        "/customers/acme/credits",
        {"amount": 1, "currency": "USD", "scope": {"meters": ["bytes"]}},
        422,
        "unknown_meter",
    )
    assert "bytes" in detail
    await env.problem("POST", "/customers/acme/credits", [1], 400, "bad_json")
    assert (await env.ok("GET", "/customers/acme/credits"))["items"] == []


async def test_recharge_rule_and_spend_cap_put_get_delete(env: Env) -> None:
    """PUT sets, GET reads, DELETE removes the recharge rule and the period's spend cap."""
    recharge, cap = "/customers/acme/credits/recharge", "/customers/acme/spend-cap"
    assert await env.ok("GET", recharge) == {"customer": "acme", "rule": None}
    rule = (await env.ok("PUT", recharge, {"threshold": 100, "target": 1000}))["rule"]
    assert (rule["threshold"], rule["target"], rule["set_at"]) == (100, 1000, T0)
    assert (await env.ok("GET", recharge))["rule"] == rule
    detail = await env.problem("PUT", recharge, {"threshold": 100, "target": 100}, 422, "invalid")
    assert detail.startswith("target")
    detail = await env.problem("PUT", recharge, {"target": 100}, 422, "invalid")
    assert detail.startswith("threshold")
    assert await env.ok("DELETE", recharge) == {"customer": "acme", "rule": None}
    assert (await env.ok("GET", recharge))["rule"] is None
    assert await env.ok("GET", cap) == {"customer": "acme", "spend_cap": None}
    got = (await env.ok("PUT", cap, {"amount": 5000}))["spend_cap"]
    assert (got["amount"], got["period"]) == (5000, "2025-11-01")  # the period T0 is in
    assert (await env.ok("GET", cap))["spend_cap"] == got
    detail = await env.problem("PUT", cap, {"amount": -1}, 422, "invalid")
    assert detail.startswith("amount")
    assert (await env.ok("DELETE", cap))["spend_cap"] is None
    assert (await env.ok("GET", cap))["spend_cap"] is None


async def test_every_credit_change_is_in_the_audit_log(env: Env) -> None:
    """Grant, void, recharge rule and spend cap changes each leave an audit row by the admin."""
    g = await env.ok("POST", "/customers/acme/credits", {"amount": 9, "currency": "USD"}, 201)
    await env.ok("POST", f"/customers/acme/credits/{g['id']}/void")
    await env.ok("PUT", "/customers/acme/credits/recharge", {"threshold": 1, "target": 2})
    await env.ok("DELETE", "/customers/acme/credits/recharge")
    await env.ok("PUT", "/customers/acme/spend-cap", {"amount": 3})
    await env.problem(
        "POST", f"/customers/acme/credits/{g['id']}/void", None, 409, "already_voided"
    )  # refused: not audited
    rows = [
        a
        for a in (await env.ok("GET", "/audit?target=acme"))["items"]
        if a["action"] != "customer.create"
    ]
    assert [a["action"] for a in rows] == [
        "credit.grant",
        "credit.void",
        "credit.recharge_rule",
        "credit.recharge_rule",
        "spend_cap.set",
    ]
    assert {a["actor"] for a in rows} == {ACTOR}
    grant, void = rows[0], rows[1]
    assert (grant["before"], grant["after"]["id"], grant["after"]["amount"]) == (None, g["id"], 9)
    assert (void["before"]["voided_at"], void["after"]["voided_at"]) == (None, T0)
    assert rows[3]["after"] is None  # the rule removed
    assert rows[4]["after"]["amount"] == 3


async def test_a_grant_reaches_a_directory_within_a_second(env: Env) -> None:
    """A grant made through the admin API is in a replica's Directory within 1 s; a void too."""
    from tests.support.store import eventually
    from tollhouse.config import StoreConfig
    from tollhouse.store import Directory

    d = Directory(StoreConfig(url=env.api.store_url, poll_interval_ms=200), clock=env.clock)
    await d.start()
    try:
        g = await env.ok("POST", "/customers/acme/credits", {"amount": 10, "currency": "USD"}, 201)

        def grants() -> list[str]:
            e = d.customer("acme")
            return [x.id for x in e.credit_grants] if e is not None else []

        assert await eventually(lambda: grants() == [g["id"]], 1.0)
        await env.ok("POST", f"/customers/acme/credits/{g['id']}/void")
        assert await eventually(lambda: grants() == [], 1.0)
    finally:
        await d.stop()


async def test_build_admin_app_shows_the_balance_in_the_plans_configured_currency(
    tmp_path: Path,
) -> None:
    """From a config, the balance currency is the plan's ``price.currency`` (and follows it)."""
    from tollhouse.admin import build_admin_app
    from tollhouse.config import parse_config

    (tmp_path / "tok").write_text(TOKEN)
    cfg = parse_config(
        {
            "plans": {"basic": {"price": {"currency": "GBP"}}},
            "store": {"url": "sqlite:///./s.db"},
            "admin": {"token_file": "tok"},
        },
        base_dir=tmp_path,
    )
    assert cfg.store is not None
    await migrate(cfg.store.url)
    root = web.Application()
    root.add_subapp("/admin", build_admin_app(cfg))
    runner = web.AppRunner(root)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as s:
            a = Admin(f"http://127.0.0.1:{port}/admin", s, cfg.store.url)
            assert (await a.call("POST", "/customers", {"id": "c", "name": "C", "plan": "basic"}))[
                0
            ] == 201
            for amount, currency in ((300, "USD"), (40, "GBP")):
                assert (
                    await a.call(
                        "POST", "/customers/c/credits", {"amount": amount, "currency": currency}
                    )
                )[0] == 201
            status, _, bal = await a.call("GET", "/customers/c/credits/balance")
            assert status == 200
            assert isinstance(bal, dict)
            assert (bal["amount"], bal["currency"]) == (40, "GBP")
    finally:
        await runner.cleanup()
