"""Effective limits (plan quotas, overrides, top-ups) enforced through the Checker."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import date
from pathlib import Path
from typing import Any

from tests.support import Clock
from tollhouse import devkeys
from tollhouse.authn import Authenticator
from tollhouse.check import Checker, State
from tollhouse.config import StoreConfig, parse_config
from tollhouse.decision import Allow, Deny, RequestInfo
from tollhouse.entitlements import build_catalog
from tollhouse.limits import LimitsBuilder, effective_quotas, needs_limiter
from tollhouse.quota import open_limiter
from tollhouse.store import Directory, StoreService, migrate, open_store
from tollhouse.subscriber import Subscriber, TopUp

ISS = "https://issuer.example"


def _topup(units: int) -> TopUp:
    return TopUp(date(2026, 11, 1), "requests", units)


def test_effective_quotas_override_then_topup() -> None:
    """An override replaces the plan's quota for its meter; a top-up adds to the result."""
    cfg = parse_config({"plans": {"free": {"quotas": {"requests": 100}}}})
    plan = cfg.plans["free"]
    assert effective_quotas(plan, {}, ()) == {"requests": 100}
    assert effective_quotas(plan, {"requests": 500}, ()) == {"requests": 500}
    assert effective_quotas(plan, {"requests": 500}, (_topup(25),)) == {"requests": 525}


def test_needs_limiter_only_when_something_is_sold() -> None:
    """No quota and no rate limit anywhere: no limiter on the hot path."""
    assert not needs_limiter(parse_config({"plans": {"free": {}}}))
    assert needs_limiter(parse_config({"plans": {"free": {"rate_limits": {"per_second": 5}}}}))


async def _setup(tmp_path: Path) -> tuple[Checker, str, Any]:
    key = devkeys.generate_ec("k1")
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    cfg = parse_config(
        {
            "auth": {
                "jwt": [
                    {"issuer": ISS, "audiences": ["api"], "jwks_file": str(tmp_path / "jwks.json")}
                ]
            },
            "meters": {"egress": {"from": "response_bytes"}},
            "features": {
                "search": {"rules": [{"path": "/v1/search"}], "meters": ["requests", "egress"]}
            },
            "plans": {"free": {"features": ["search"], "quotas": {"requests": 3}}},
            "customers": {
                "acme": {"plan": "free", "quota_overrides": {"requests": 5}},
                "bob": {"plan": "free"},
            },
        }
    )
    authn = Authenticator(cfg.auth)
    await authn.start()
    state = State(build_catalog(cfg))
    limiter = open_limiter("memory", clock=time.time, instance="t")
    builder = LimitsBuilder()
    checker = Checker(
        state, authn, limiter=limiter, limits_for=builder.for_customer, clock=time.time
    )
    return checker, ISS, key


async def _run(checker: Checker, key: Any, sub: str, n: int) -> list[int]:
    tok = devkeys.make_token(key, issuer=ISS, audience="api", subject=sub)
    req = RequestInfo(method="GET", path="/v1/search", headers={"authorization": f"Bearer {tok}"})
    out = []
    for _ in range(n):
        d = await checker.check(req)
        out.append(200 if isinstance(d, Allow) else d.status)  # type: ignore[union-attr]
    return out


async def test_quota_and_override_enforced(tmp_path: Path) -> None:
    """The plan's quota of 3 holds for bob; acme's override of 5 replaces it."""
    checker, _, key = await _setup(tmp_path)
    assert (await _run(checker, key, "bob", 5)) == [200, 200, 200, 429, 429]
    assert (await _run(checker, key, "acme", 7)) == [200] * 5 + [429] * 2


async def test_denied_answer_names_limit_and_carries_headers(tmp_path: Path) -> None:
    """A 429 names the limit in its problem body and carries Retry-After and RateLimit."""
    checker, _, key = await _setup(tmp_path)
    await _run(checker, key, "bob", 3)
    tok = devkeys.make_token(key, issuer=ISS, audience="api", subject="bob")
    d = await checker.check(
        RequestInfo(method="GET", path="/v1/search", headers={"authorization": f"Bearer {tok}"})
    )
    assert isinstance(d, Deny)
    names = dict(d.headers)
    assert int(names["retry-after"]) > 0
    assert "ratelimit" in names
    assert "ratelimit-policy" in names
    assert d.problem()["limit"] == "requests/period"


def test_needs_limiter_when_a_store_is_configured() -> None:
    """With a store, overrides and top-ups can appear live: a limiter is needed (issue 13.9)."""
    cfg = parse_config({"plans": {"pro": {}}, "store": {"url": "sqlite:///./s.db"}})
    assert needs_limiter(cfg)


def test_topup_on_an_unlimited_meter_does_not_cap_it() -> None:
    """A top-up adds to a quota; on a meter the plan does not limit, it sets no cap."""
    plan = parse_config({"plans": {"pro": {}}}).plans["pro"]
    assert effective_quotas(plan, {}, (_topup(25),)) == {}
    assert effective_quotas(plan, {"requests": 5}, (_topup(3),)) == {"requests": 8}


async def _store_directory(tmp_path: Path) -> tuple[StoreService, Directory]:
    url = f"sqlite:///{tmp_path}/store.db"
    await migrate(url)
    svc = StoreService(await open_store(url), clock=time.time, plans={"free"}, meters={"requests"})
    await svc.create_customer(actor="t", name="Zed", plan="free", customer_id="zed")
    directory = Directory(StoreConfig(url=url, poll_interval_ms=50))
    await directory.start()
    return svc, directory


async def _until(pred: Any) -> None:
    """Wait (polling, no time bound asserted) until ``pred()`` holds; the store poll is 50 ms."""
    for _ in range(500):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the directory never saw the change")


async def test_limits_cache_hits_for_store_entries_and_follows_changes(tmp_path: Path) -> None:
    """Equal store entries (a new object per lookup) hit one cache entry; a change is not stale."""
    svc, directory = await _store_directory(tmp_path)
    try:
        cfg = parse_config({"plans": {"free": {"quotas": {"requests": 10}}}})
        builder = LimitsBuilder()
        cat = build_catalog(cfg)
        plan = cfg.plans["free"]

        def zed() -> Subscriber:
            sub = directory.customer("zed")
            assert sub is not None
            return sub

        first = builder.for_customer(cat, zed(), plan)
        for _ in range(100):
            assert builder.for_customer(cat, zed(), plan) is first
        assert (builder.hits, builder.misses, len(builder)) == (100, 1, 1)
        await svc.set_override("zed", "requests", 50, actor="t")
        await _until(lambda: directory.customer("zed").quota_overrides)  # type: ignore[union-attr]
        assert builder.for_customer(cat, zed(), plan).quotas == {"requests": 50}
        await svc.add_topup("zed", "requests", 7, actor="t")
        await _until(lambda: directory.customer("zed").topups)  # type: ignore[union-attr]
        assert builder.for_customer(cat, zed(), plan).quotas == {"requests": 57}
        assert len(builder) == 3
    finally:
        await directory.stop()
        await svc.backend.close()


async def test_limits_cache_is_dropped_with_the_catalog(tmp_path: Path) -> None:
    """A new catalog version (hot reload) rebuilds limits: a changed plan quota applies."""
    cfg = parse_config(
        {"plans": {"free": {"quotas": {"requests": 10}}}, "customers": {"bob": {"plan": "free"}}}
    )
    state = State(build_catalog(cfg, b"v1"))
    builder = LimitsBuilder()
    bob = state.catalog.customers["bob"]
    assert builder.for_customer(state.catalog, bob, cfg.plans["free"]).quotas == {"requests": 10}
    cfg2 = parse_config(
        {"plans": {"free": {"quotas": {"requests": 20}}}, "customers": {"bob": {"plan": "free"}}}
    )
    state.catalog = build_catalog(cfg2, b"v2")
    bob2 = state.catalog.customers["bob"]
    assert builder.for_customer(state.catalog, bob2, cfg2.plans["free"]).quotas == {"requests": 20}
    assert len(builder) == 1


async def test_answers_that_spend_nothing_carry_ratelimit_headers(tmp_path: Path) -> None:
    """403 not_entitled / unknown_route and a free feature carry the plan's limits, unspent."""
    key = devkeys.generate_ec("k1")
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    cfg = parse_config(
        {
            "auth": {
                "jwt": [
                    {"issuer": ISS, "audiences": ["api"], "jwks_file": str(tmp_path / "jwks.json")}
                ]
            },
            "features": {
                "search": [{"path": "/v1/search"}],
                "export": [{"path": "/v1/export"}],
                "usage": {"rules": [{"path": "/v1/usage"}], "meters": []},
            },
            "plans": {
                "free": {
                    "features": ["search", "usage"],
                    "quotas": {"requests": 3},
                    "rate_limits": {"per_second": 5},
                }
            },
            "customers": {"bob": {"plan": "free"}},
        }
    )
    authn = Authenticator(cfg.auth)
    await authn.start()
    state = State(build_catalog(cfg))
    clock = Clock(time.time())  # frozen: no rate token comes back between the checks
    checker = Checker(
        state,
        authn,
        limiter=open_limiter("memory", clock=clock, instance="t"),
        limits_for=LimitsBuilder().for_customer,
        clock=clock,
    )
    tok = devkeys.make_token(key, issuer=ISS, audience="api", subject="bob")

    async def check(path: str) -> Any:
        return await checker.check(
            RequestInfo(method="GET", path=path, headers={"authorization": f"Bearer {tok}"})
        )

    assert isinstance(await check("/v1/search"), Allow)  # one unit and one token spent
    for path, want in (("/v1/export", 403), ("/v1/nowhere", 403), ("/v1/usage", 200)):
        d = await check(path)
        status = 200 if isinstance(d, Allow) else d.status
        headers = dict(d.response_headers if isinstance(d, Allow) else d.headers)
        assert status == want, path
        assert headers["ratelimit-policy"].startswith('"requests/period";q=3;'), path
        assert '"per_second";q=5;w=1' in headers["ratelimit-policy"], path
        assert headers["ratelimit"].startswith('"requests/period";r=2;'), path
        assert '"per_second";r=4;' in headers["ratelimit"], path
