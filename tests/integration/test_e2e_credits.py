"""Prepaid credit end to end (issue 15): real Envoy, PostgreSQL store, credit shared via Redis.

Customers on the ``prepaid`` plan pay 0.10 USD per ``/v1/search`` request out of credit grants;
when the balance is used up the answer is 402 ``credit_exhausted`` with the balance in the body.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    LocalStack,
    Tollhouse,
    add_replica,
    admin_call,
    build_stack,
    http_request,
    wait_until,
)
from tests.servers import PostgresServer, RedisServer
from tollhouse.demo.stack import find_binary

pytestmark = pytest.mark.e2e  # starts a real Envoy

PAYG = {
    "features": ["search", "usage"],
    "quotas": {"requests": 1},
    "overage": "allow",
    "price": {
        "currency": "USD",
        "meters": {"requests": {"model": "per_unit", "unit_price": "0.10"}},
    },
}
PREPAID = {
    "features": ["search", "reports", "usage"],
    "prepaid": True,
    "price": {
        "currency": "USD",
        "meters": {
            "requests": {"model": "per_unit", "unit_price": "0.10"},
            "tokens": {"model": "per_unit", "unit_price": "0.001"},
        },
    },
}


@dataclass(frozen=True)
class Credits:
    """Two replicas (one behind ``stack``) sharing PostgreSQL and Redis, and the store's URL."""

    stack: LocalStack
    replica: Tollhouse | None
    store_url: str
    admin_token: str

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call the first replica's admin API; fail unless 2xx; the JSON body."""
        return admin_call(self.stack, self.admin_token, method, path, body)

    def customer(self, plan: str = "prepaid") -> tuple[str, str]:
        """A new customer on ``plan`` with an API key: (id, key)."""
        cid = "p" + uuid.uuid4().hex[:10]
        self.admin("POST", "/customers", {"id": cid, "name": "E2E " + cid, "plan": plan})
        key = str(self.admin("POST", f"/customers/{cid}/keys")["key"])
        wait_until(
            lambda: [self.status(key, "/v1/usage") for _ in range(4)],  # spends nothing
            lambda s: s == [200] * 4,
            timeout_s=2.0,
            interval_s=0.05,
            what="key known to every replica",
        )
        return cid, key

    def grant(self, cid: str, amount: int, **kw: Any) -> None:
        """Grant ``amount`` minor units of USD to ``cid`` through the admin API."""
        self.admin("POST", f"/customers/{cid}/credits", {"amount": amount, "currency": "USD", **kw})

    def consumed(self, cid: str) -> int:
        """What the replicas flushed to the store for ``cid`` (1/1000 minor units)."""
        listed = self.admin("GET", f"/customers/{cid}/credits")
        return sum(int(g["consumed_milli"]) for g in listed["items"])

    def status(self, key: str, path: str = "/v1/search") -> int:
        """One request through Envoy."""
        return self.stack.request(path, api_key=key).status


def _start(tmp: Path, store_url: str, counters: str, *, replicas: int) -> Iterator[Credits]:
    token = secrets.token_urlsafe(24)
    (tmp / "admin.token").write_text(token + "\n", encoding="utf-8")
    migrated = subprocess.run(
        [str(find_binary("tollhouse")), "store", "migrate", "--store-url", store_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr[-1000:]

    def edit(config: dict[str, Any]) -> dict[str, Any]:
        return {
            **config,
            "store": {"url": store_url, "poll_interval_ms": 200},
            "admin": {"token_file": str(tmp / "admin.token")},
            "counters": counters,
            "plans": {**config["plans"], "prepaid": PREPAID, "payg": PAYG},
        }

    stack = build_stack(tmp / "stack", edit, usage_listener=True)
    replica = add_replica(stack, "replica-2") if replicas == 2 else None
    try:
        stack.start()
        if replica is not None:
            replica.start()
        yield Credits(stack, replica, store_url, token)
    finally:
        stack.stop()
        if replica is not None:
            replica.stop()


@pytest.fixture(scope="module")
def credits(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Credits]:
    """A fresh PostgreSQL database and Redis, two replicas and Envoy (round robin over both)."""
    tmp = tmp_path_factory.mktemp("credits")
    redis_srv = RedisServer(tmp / "redis").start()
    try:
        yield from _start(tmp, postgres_server.fresh_database_url("th_"), redis_srv.url, replicas=2)
    finally:
        redis_srv.stop()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Credits]:
    """One replica on a SQLite store with its counters in memory (the default deployment)."""
    tmp = tmp_path_factory.mktemp("credits-one")
    yield from _start(tmp, f"sqlite://{tmp}/store.db", "memory", replicas=1)


def balance_shown(c: Credits, key: str) -> str:
    """The credit balance ``GET /v1/usage`` shows the customer (free: it spends nothing)."""
    resp = c.stack.request("/v1/usage", api_key=key)
    assert resp.status == 200, resp.body[:300]
    return str(resp.json()["credit_balance"])


def test_exactly_ten_requests_then_402_and_usage_shows_the_balance(single: Credits) -> None:
    """One replica: 1.00 at 0.10 a request is exactly 10 x 200, then 402; /v1/usage agrees."""
    cid, key = single.customer()
    single.grant(cid, 100)
    wait_until(
        lambda: balance_shown(single, key),
        lambda b: b == "1.00",
        timeout_s=1.0,
        interval_s=0.02,
        what="grant in the balance",
    )
    statuses = [single.status(key) for _ in range(13)]
    assert statuses == [200] * 10 + [402] * 3
    assert balance_shown(single, key) == "0.00"
    wait_until(
        lambda: single.consumed(cid),
        lambda c: c == 100_000,
        timeout_s=5.0,
        what="spend flushed to the store",
    )


def test_an_expired_grant_is_never_used(single: Credits) -> None:
    """A grant that expired is not spent; one expiring in a second stops paying when it does."""
    cid, key = single.customer()
    now = time.time()
    single.grant(cid, 500, effective_at=now - 7200, expires_at=now - 3600)
    single.grant(cid, 100, priority=1, expires_at=now + 1.5)
    wait_until(
        lambda: balance_shown(single, key),
        lambda b: b == "1.00",
        timeout_s=1.0,
        interval_s=0.02,
        what="the live grant alone in the balance",
    )
    assert single.status(key) == 200
    wait_until(
        lambda: single.status(key, "/v1/search"),
        lambda s: s == 402,
        timeout_s=3.0,
        interval_s=0.2,
        what="the grant expired",
    )
    assert balance_shown(single, key) == "0.00"
    assert single.consumed(cid) <= 100_000


def test_one_dollar_at_ten_cents_is_ten_requests_then_402_with_the_balance(
    credits: Credits,
) -> None:
    """Two replicas: a grant passes on both within 1 s; 1.00 at 0.10 is 10 x 200 at most."""
    cid, key = credits.customer()
    first = credits.stack.request("/v1/search", api_key=key)
    assert (first.status, first.problem_code()) == (402, "credit_exhausted")
    assert (first.json()["balance"], first.json()["currency"]) == (0, "USD")
    credits.grant(cid, 100)
    statuses: list[int] = []  # every answer counts: the wait's 200s spend credit too
    wait_until(
        lambda: statuses.extend(credits.status(key) for _ in range(2)) or statuses[-2:],
        lambda s: s == [200, 200],
        timeout_s=1.0,
        interval_s=0.02,
        what="grant seen by both replicas",
    )
    statuses += [credits.status(key) for _ in range(18)]
    served = statuses.count(200)
    assert served <= 10, statuses
    assert set(statuses) == {200, 402}, statuses
    # Lease units idle on one replica go back within its idle return (5 s): then exactly 10.
    later: list[int] = []
    wait_until(
        lambda: later.extend(credits.status(key) for _ in range(2)) or later,
        lambda got: served + got.count(200) >= 10,
        timeout_s=15.0,
        interval_s=0.5,
        what=f"all credit spent (first {statuses})",
    )
    assert served + later.count(200) == 10, (statuses, later)
    last = credits.stack.request("/v1/search", api_key=key)
    assert (last.status, last.problem_code(), last.json()["balance"]) == (
        402,
        "credit_exhausted",
        0,
    )
    wait_until(
        lambda: credits.consumed(cid),
        lambda c: c == 100_000,
        timeout_s=5.0,
        what="spend flushed to the store, exact to the minor unit",
    )


def spend_cap(c: Credits, key: str, method: str, body: dict[str, Any] | None = None) -> Any:
    """Call the customer's own spend-cap API through Envoy with its API key."""
    return http_request(
        c.stack.ports.envoy,
        "/v1/usage/spend-cap",
        method=method,
        headers={"x-api-key": key, "content-type": "application/json"},
        body=None if body is None else json.dumps(body).encode(),
    )


def test_a_customer_caps_its_own_spend_and_gets_402_spend_cap_reached(single: Credits) -> None:
    """A pay-as-you-go customer caps spend at 0.30: within about a second of reaching it, 402.

    The cap is set with the customer's own key through Envoy; removing it serves again.
    """
    cid, key = single.customer("payg")
    bad = spend_cap(single, key, "PUT", {"amount": "lots"})
    assert (bad.status, bad.problem_code()) == (400, "invalid")
    put = spend_cap(single, key, "PUT", {"amount": 30})
    assert put.status == 200, put.body[:300]
    assert put.json()["cap"]["amount"] == 30
    statuses: list[int] = []
    wait_until(
        lambda: statuses.append(single.status(key)) or statuses[-1],
        lambda s: s == 402,
        timeout_s=5.0,
        interval_s=0.1,
        what="spend cap enforced",
    )
    assert statuses.count(200) >= 3, statuses  # 0.30 at 0.10 a request is paid for
    refused = single.stack.request("/v1/search", api_key=key)
    assert refused.problem_code() == "spend_cap_reached"
    assert (refused.json()["cap"], refused.json()["currency"]) == (30, "USD")
    assert refused.json()["spent"] >= 30
    assert spend_cap(single, key, "GET").json()["reached"] is True
    assert spend_cap(single, key, "DELETE").status == 200
    wait_until(
        lambda: single.status(key),
        lambda s: s == 200,
        timeout_s=3.0,
        interval_s=0.1,
        what="cap removed",
    )
    audit = single.admin("GET", f"/audit?target={cid}")
    actions = [(a["actor"], a["action"]) for a in audit["items"]]
    assert (f"customer:{cid}", "spend_cap.set") in actions
