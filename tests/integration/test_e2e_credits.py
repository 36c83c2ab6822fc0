"""Prepaid credit end to end (issue 15): real Envoy, PostgreSQL store, credit shared via Redis.

Customers on the ``prepaid`` plan pay 0.10 USD per ``/v1/search`` request out of credit grants;
when the balance is used up the answer is 402 ``credit_exhausted`` with the balance in the body.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.harness import (
    LocalStack,
    Tollhouse,
    add_replica,
    build_stack,
    http_request,
    wait_until,
)
from tests.integration.test_e2e_store import _fresh_database
from tests.servers import PostgresServer, RedisServer
from tollhouse.demo.stack import find_binary
from tollhouse.store import StoreService, connect_backend

pytestmark = pytest.mark.integration

PREPAID = {"features": ["search", "reports", "usage"], "prepaid": True,
           "price": {"currency": "USD", "meters": {
               "requests": {"model": "per_unit", "unit_price": "0.10"},
               "tokens": {"model": "per_unit", "unit_price": "0.001"}}}}


@dataclass(frozen=True)
class Credits:
    """Two replicas (one behind ``stack``) sharing PostgreSQL and Redis, and the store's URL."""

    stack: LocalStack
    replica: Tollhouse
    store_url: str
    admin_token: str

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        """Call the first replica's admin API; fail unless 2xx; the JSON body."""
        resp = http_request(self.stack.ports.tollhouse_admin, "/admin" + path, method=method,
                            headers={"authorization": f"Bearer {self.admin_token}",
                                     "content-type": "application/json"},
                            body=None if body is None else json.dumps(body).encode())
        assert 200 <= resp.status < 300, (method, path, resp.status, resp.body[:300])
        doc: dict[str, Any] = resp.json()
        return doc

    def customer(self) -> tuple[str, str]:
        """A new prepaid customer with an API key: (id, key)."""
        cid = "p" + uuid.uuid4().hex[:10]
        self.admin("POST", "/customers", {"id": cid, "name": "E2E " + cid, "plan": "prepaid"})
        key = str(self.admin("POST", f"/customers/{cid}/keys")["key"])
        wait_until(lambda: [self.status(key) for _ in range(4)], lambda s: 401 not in s,
                   timeout_s=2.0, interval_s=0.05, what="key known to both replicas")
        return cid, key

    def grant(self, cid: str, amount: int, **kw: Any) -> None:
        """Grant ``amount`` minor units of USD to ``cid`` in the store."""
        async def run() -> None:
            svc = StoreService(connect_backend(self.store_url), clock=time.time)
            try:
                await svc.grant_credit(cid, actor="e2e", amount=amount, currency="USD", **kw)
            finally:
                await svc.backend.close()

        asyncio.run(run())

    def consumed(self, cid: str) -> int:
        """What the replicas flushed to the store for ``cid`` (1/1000 minor units)."""
        async def run() -> int:
            svc = StoreService(connect_backend(self.store_url), clock=time.time)
            try:
                return sum((await svc.consumed(cid)).values())
            finally:
                await svc.backend.close()

        return asyncio.run(run())

    def status(self, key: str, path: str = "/v1/search") -> int:
        """One request through Envoy."""
        return self.stack.request(path, api_key=key).status


@pytest.fixture(scope="module")
def credits(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
            ) -> Iterator[Credits]:
    """A fresh database and Redis, two replicas and Envoy (round robin over both)."""
    tmp = tmp_path_factory.mktemp("credits")
    url = _fresh_database(postgres_server)
    redis_srv = RedisServer(tmp / "redis").start()
    token = secrets.token_urlsafe(24)
    (tmp / "admin.token").write_text(token + "\n", encoding="utf-8")
    migrated = subprocess.run([str(find_binary("tollhouse")), "store", "migrate", "--store-url",
                               url], capture_output=True, text=True, timeout=60, check=False)
    assert migrated.returncode == 0, migrated.stderr[-1000:]

    def edit(config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "store": {"url": url, "poll_interval_ms": 200},
                "admin": {"token_file": str(tmp / "admin.token")}, "counters": redis_srv.url,
                "plans": {**config["plans"], "prepaid": PREPAID}}

    stack = build_stack(tmp / "stack", edit)
    replica = add_replica(stack, "replica-2")
    try:
        stack.start()
        replica.start()
        yield Credits(stack, replica, url, token)
    finally:
        stack.stop()
        replica.stop()
        redis_srv.stop()


def test_one_dollar_at_ten_cents_is_ten_requests_then_402_with_the_balance(
        credits: Credits) -> None:
    """1.00 of credit at 0.10 a request over two replicas: 10 x 200 at most, then 402."""
    cid, key = credits.customer()
    first = credits.stack.request("/v1/search", api_key=key)
    assert (first.status, first.problem_code()) == (402, "credit_exhausted")
    assert (first.json()["balance"], first.json()["currency"]) == (0, "USD")
    credits.grant(cid, 100)
    ok = wait_until(lambda: credits.status(key), lambda s: s == 200, timeout_s=1.0,
                    interval_s=0.02, what="grant seen")
    statuses = [ok] + [credits.status(key) for _ in range(19)]
    served = statuses.count(200)
    assert served <= 10, statuses
    assert set(statuses) == {200, 402}, statuses
    # Lease units idle on one replica go back within its idle return (5 s): then exactly 10.
    wait_until(lambda: served + [credits.status(key) for _ in range(4)].count(200),
               lambda n: n >= 10, timeout_s=10.0, interval_s=1.0, what="all credit spent")
    last = credits.stack.request("/v1/search", api_key=key)
    assert (last.status, last.problem_code(), last.json()["balance"]) == (402,
                                                                          "credit_exhausted", 0)
    wait_until(lambda: credits.consumed(cid), lambda c: c == 100_000, timeout_s=5.0,
               what="spend flushed to the store, exact to the minor unit")
