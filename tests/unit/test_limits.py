"""Effective limits (plan quotas, overrides, top-ups) enforced through the Checker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tollhouse import devkeys
from tollhouse.authn import Authenticator
from tollhouse.check import Checker, State
from tollhouse.config import parse_config
from tollhouse.decision import Allow, Deny, RequestInfo
from tollhouse.entitlements import build_catalog
from tollhouse.limits import LimitsBuilder, effective_quotas, needs_limiter
from tollhouse.quota import open_limiter

ISS = "https://issuer.example"


def test_effective_quotas_override_then_topup() -> None:
    """An override replaces the plan's quota for its meter; a top-up adds to the result."""
    cfg = parse_config({"plans": {"free": {"quotas": {"requests": 100}}}})
    plan = cfg.plans["free"]
    assert effective_quotas(plan, None, None) == {"requests": 100}
    assert effective_quotas(plan, {"requests": 500}, None) == {"requests": 500}
    assert effective_quotas(plan, (("requests", 500),), {"requests": 25}) == {"requests": 525}


def test_needs_limiter_only_when_something_is_sold() -> None:
    """No quota and no rate limit anywhere: no limiter on the hot path."""
    assert not needs_limiter(parse_config({"plans": {"free": {}}}))
    assert needs_limiter(parse_config({"plans": {"free": {"rate_limits": {"per_second": 5}}}}))


async def _setup(tmp_path: Path) -> tuple[Checker, str, Any]:
    key = devkeys.generate_ec("k1")
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    cfg = parse_config({
        "auth": {"jwt": [{"issuer": ISS, "audiences": ["api"],
                          "jwks_file": str(tmp_path / "jwks.json")}]},
        "meters": {"egress": {"from": "response_bytes"}},
        "features": {"search": {"rules": [{"path": "/v1/search"}],
                                "meters": ["requests", "egress"]}},
        "plans": {"free": {"features": ["search"], "quotas": {"requests": 3}}},
        "customers": {"acme": {"plan": "free", "quota_overrides": {"requests": 5}},
                      "bob": {"plan": "free"}},
    })
    authn = Authenticator(cfg.auth)
    await authn.start()
    state = State(build_catalog(cfg))
    limiter = open_limiter("memory", clock=time.time, instance="t")
    builder = LimitsBuilder(state)
    checker = Checker(state, authn, limiter=limiter, limits_for=builder.for_customer,
                      clock=time.time)
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
    d = await checker.check(RequestInfo(method="GET", path="/v1/search",
                                        headers={"authorization": f"Bearer {tok}"}))
    assert isinstance(d, Deny)
    names = dict(d.headers)
    assert int(names["retry-after"]) > 0
    assert "ratelimit" in names
    assert "ratelimit-policy" in names
    assert d.problem()["limit"] == "requests/period"
