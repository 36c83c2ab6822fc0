"""Store-driven limits, RateLimit headers, live usage and metrics through real Envoy (issue 13).

One stack per transport: a SQLite entitlement store changed through the admin API, a catalog in
which no plan sells a quota or a rate limit (every limit comes from the store), memory counters,
and a meter forwarder so slow (60 s) that nothing reaches the meter while the tests run: what
``/v1/usage`` shows can only come from the live counters the Check uses.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    HttpResponse,
    LocalStack,
    admin_call,
    build_stack,
    wait_until,
)
from tollhouse.demo.stack import find_binary

pytestmark = pytest.mark.e2e  # starts a real Envoy


@dataclass(frozen=True)
class Shop:
    """The stack and an admin client for its tollhouse."""

    stack: LocalStack
    admin_token: str

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call the admin API; fail unless it answers 2xx; return the JSON body."""
        return admin_call(self.stack, self.admin_token, method, path, body)

    def customer(self, plan: str = "free") -> tuple[str, str]:
        """Create a store customer; return its id and a JWT for it."""
        cid = "c" + uuid.uuid4().hex[:10]
        self.admin("POST", "/customers", {"id": cid, "name": "E2E " + cid, "plan": plan})
        return cid, self.stack.token(cid)

    def get(self, path: str, token: str) -> HttpResponse:
        """One request through Envoy."""
        return self.stack.request(path, token=token)


def _no_plan_limits(config: dict[str, Any], store_url: str, token_file: Path) -> dict[str, Any]:
    plans = {
        name: {k: v for k, v in plan.items() if k not in ("quotas", "rate_limits")}
        for name, plan in config["plans"].items()
    }
    plans["gauged"] = {"features": ["search", "usage"]}
    customers = {k: v for k, v in config["customers"].items() if not v.get("quota_overrides")}
    metering = {**config["metering"], "flush_interval_ms": 60_000}
    return {
        **config,
        "plans": plans,
        "customers": customers,
        "metering": metering,
        "store": {"url": store_url, "poll_interval_ms": 100},
        "admin": {"token_file": str(token_file)},
    }


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Shop]:
    """A migrated SQLite store, then tollhouse (usage listener on) and Envoy."""
    workdir = tmp_path_factory.mktemp(f"limits-{transport}")
    store_url = f"sqlite://{workdir}/store.db"
    migrated = subprocess.run(
        [str(find_binary("tollhouse")), "store", "migrate", "--store-url", store_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr[-1000:]
    token = secrets.token_urlsafe(24)
    (workdir / "admin.token").write_text(token + "\n", encoding="utf-8")
    stack = build_stack(
        workdir / "stack",
        lambda c: _no_plan_limits(c, store_url, workdir / "admin.token"),
        usage_listener=True,
        transport=transport,
    )
    try:
        stack.start()
        yield Shop(stack, token)
    finally:
        stack.stop()


def _item(header: str, name: str) -> dict[str, int]:
    """The integer parameters of item ``name`` in a RateLimit / RateLimit-Policy header."""
    for item in header.split(","):
        label, _, rest = item.strip().partition(";")
        if label.strip('"') == name:
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
    raise AssertionError(f"{name!r} not in {header!r}")


def _quota(resp: HttpResponse) -> tuple[int, int] | None:
    """``(q, r)`` of ``requests/period`` in an answer's RateLimit headers; None without them."""
    if "ratelimit-policy" not in resp.headers:
        return None
    return (
        _item(resp.headers["ratelimit-policy"], "requests/period")["q"],
        _item(resp.headers["ratelimit"], "requests/period")["r"],
    )


def _await_quota(shop: Shop, token: str, quota: int) -> HttpResponse:
    """Poll the free /v1/usage route (it spends nothing) until the store's quota is applied."""
    return wait_until(
        lambda: shop.get("/v1/usage", token),
        lambda r: r.status == 200 and _quota(r) is not None and _quota(r)[0] == quota,  # type: ignore[index]
        timeout_s=5,
        interval_s=0.05,
        what=f"quota {quota} applied",
    )


def test_store_override_and_topup_are_enforced_when_no_plan_sells_a_limit(shop: Shop) -> None:
    """Item 9: a store override of 2 admits 2 then 429; a top-up of 1 admits exactly one more."""
    cid, token = shop.customer()
    shop.admin("PUT", f"/customers/{cid}/overrides/requests", {"units": 2})
    _await_quota(shop, token, 2)
    got = [shop.get("/v1/search", token) for _ in range(3)]
    assert [r.status for r in got] == [200, 200, 429]
    assert [_quota(r) for r in got] == [(2, 1), (2, 0), (2, 0)]
    assert got[2].json()["code"] == "quota_exceeded"
    shop.admin("POST", f"/customers/{cid}/topups", {"meter": "requests", "units": 1})
    _await_quota(shop, token, 3)
    assert [shop.get("/v1/search", token).status for _ in range(2)] == [200, 429]


def test_usage_is_live_right_after_the_quota_decision(shop: Shop) -> None:
    """Item 12: right after a 429, /v1/usage says the quota is used up (the meter has nothing)."""
    cid, token = shop.customer()
    shop.admin("PUT", f"/customers/{cid}/overrides/requests", {"units": 2})
    _await_quota(shop, token, 2)
    assert [shop.get("/v1/search", token).status for _ in range(3)] == [200, 200, 429]
    doc = shop.get("/v1/usage", token).json()
    assert doc["customer"] == cid
    assert doc["meters"]["requests"] == {
        **doc["meters"]["requests"],
        "used": 2,
        "quota": 2,
        "remaining": 0,
    }


def test_denials_402_and_403_carry_ratelimit_headers(shop: Shop) -> None:
    """Item 11: 403 not_entitled and 402 payment_required carry the limits, nothing spent."""
    cid, token = shop.customer()
    shop.admin("PUT", f"/customers/{cid}/overrides/requests", {"units": 5})
    assert _quota(_await_quota(shop, token, 5)) == (5, 5)  # a free feature: headers, unspent
    assert _quota(shop.get("/v1/search", token)) == (5, 4)
    denied = shop.get("/v1/export/a.csv", token)
    assert (denied.status, denied.problem_code()) == (403, "not_entitled")
    assert _quota(denied) == (5, 4)
    shop.admin("POST", f"/customers/{cid}/status", {"status": "suspended"})
    suspended = wait_until(
        lambda: shop.get("/v1/usage", token),
        lambda r: r.status == 402,
        timeout_s=5,
        interval_s=0.05,
        what="suspension applied",
    )
    assert suspended.problem_code() == "payment_required"
    assert _quota(suspended) == (5, 4)
    again = shop.get("/v1/search", token)
    assert (again.status, _quota(again)) == (402, (5, 4))


def _series(metrics: str, name: str) -> list[str]:
    return [
        line
        for line in metrics.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]


def test_metrics_config_info_store_health_and_quota_gauges(shop: Shop) -> None:
    """Item 13: one config_info series across a reload; store_healthy 1; gauges fresh on scrape."""
    th = shop.stack.tollhouse
    before = _series(th.metrics(), "tollhouse_config_info")
    assert len(before) == 1, before
    th.rewrite_config({**th.config, "check_deadline_ms": 149})
    after = wait_until(
        lambda: _series(th.metrics(), "tollhouse_config_info"),
        lambda s: s != before,
        timeout_s=10,
        what="config reloaded",
    )
    assert len(after) == 1, after
    assert after[0].endswith(" 1.0"), after
    assert _series(th.metrics(), "tollhouse_store_healthy") == ["tollhouse_store_healthy 1.0"]
    cid, token = shop.customer("gauged")
    shop.admin("PUT", f"/customers/{cid}/overrides/requests", {"units": 10})
    _await_quota(shop, token, 10)
    assert [shop.get("/v1/search", token).status for _ in range(4)] == [200] * 4
    text = th.metrics()
    assert 'tollhouse_quota_used_units{meter="requests",plan="gauged"} 4.0' in text
    assert 'tollhouse_quota_remaining_units{meter="requests",plan="gauged"} 6.0' in text
