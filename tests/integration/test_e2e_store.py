"""The entitlement store end to end (issue 4): admin API changes seen through real Envoy.

Two `tollhouse serve` replicas share one PostgreSQL database (fresh per test) and sit behind one
Envoy that balances Checks over both; the admin API of the first replica makes the changes.
"""

from __future__ import annotations

import secrets
import subprocess
import uuid
from collections.abc import Callable, Iterator
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
    wait_until,
)
from tests.servers import PostgresServer
from tollhouse.demo.stack import find_binary

pytestmark = pytest.mark.e2e  # starts a real Envoy

PROPAGATION_S = 1.0  # issue 4: a change reaches every replica within a second
ROUND = 4  # consecutive requests: Envoy's round robin sends them to both replicas


@dataclass(frozen=True)
class Pair:
    """The stack (replica 1 + Envoy), replica 2, and an admin client for replica 1."""

    stack: LocalStack
    replica: Tollhouse
    admin_token: str

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call the admin API; fail unless it answers 2xx; return the JSON body."""
        return admin_call(self.stack, self.admin_token, method, path, body)

    def statuses(self, path: str, api_key: str) -> list[int]:
        """One round of requests through Envoy (both replicas answer some of them)."""
        return [self.stack.request(path, api_key=api_key).status for _ in range(ROUND)]


@pytest.fixture
def pair(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Pair]:
    """Migrate a fresh database, then start both replicas and Envoy."""
    url = postgres_server.fresh_database_url("th_")
    token = secrets.token_urlsafe(24)
    (tmp_path / "admin.token").write_text(token + "\n", encoding="utf-8")
    migrated = subprocess.run(
        [str(find_binary("tollhouse")), "store", "migrate", "--store-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr[-1000:]

    def edit(config: dict[str, Any]) -> dict[str, Any]:
        return {
            **config,
            "store": {"url": url, "poll_interval_ms": 200},
            "admin": {"token_file": str(tmp_path / "admin.token")},
        }

    stack = build_stack(tmp_path / "stack", edit)
    replica = add_replica(stack, "replica-2")
    try:
        stack.start()
        replica.start()
        yield Pair(stack, replica, token)
    finally:
        stack.stop()
        replica.stop()


def _within(probe: Callable[[], list[int]], want: int, what: str) -> None:
    wait_until(
        probe,
        lambda got: got == [want] * ROUND,
        timeout_s=PROPAGATION_S,
        interval_s=0.02,
        what=what,
    )


def _new_customer(pair: Pair, plan: str) -> tuple[str, str]:
    """Create a customer and issue it an API key; return (customer id, key)."""
    cid = "c" + uuid.uuid4().hex[:10]
    pair.admin("POST", "/customers", {"id": cid, "name": "E2E " + cid, "plan": plan})
    issued = pair.admin("POST", f"/customers/{cid}/keys")
    return cid, str(issued["key"])


def test_issued_key_works_then_revoked_key_is_401_on_both_replicas(pair: Pair) -> None:
    """A key issued via the admin API passes at once; revoked, both replicas refuse it in 1 s."""
    cid, key = _new_customer(pair, "pro")
    _within(lambda: pair.statuses("/v1/search", api_key=key), 200, "new key accepted")
    resp = pair.stack.request("/v1/search", api_key=key)
    assert resp.json()["headers"]["x-tollhouse-customer"] == cid
    key_id = pair.admin("GET", f"/customers/{cid}/keys")["items"][0]["id"]
    pair.admin("POST", f"/keys/{key_id}/revoke")
    _within(lambda: pair.statuses("/v1/search", api_key=key), 401, "revoked key refused")


def test_suspend_is_402_and_reactivate_is_200(pair: Pair) -> None:
    """Suspending the subscription gives 402 payment_required; reactivating restores 200."""
    cid, key = _new_customer(pair, "pro")
    _within(lambda: pair.statuses("/v1/search", api_key=key), 200, "active customer")
    pair.admin("POST", f"/customers/{cid}/status", {"status": "suspended"})
    _within(lambda: pair.statuses("/v1/search", api_key=key), 402, "suspended customer")
    assert pair.stack.request("/v1/search", api_key=key).problem_code() == "payment_required"
    pair.admin("POST", f"/customers/{cid}/status", {"status": "active"})
    _within(lambda: pair.statuses("/v1/search", api_key=key), 200, "reactivated customer")


def test_plan_change_applies_without_restart(pair: Pair) -> None:
    """Admin API plan change pro -> enterprise unlocks /v1/reports on both replicas, no restart."""
    pids = [p.proc.pid for p in (pair.stack.tollhouse, pair.replica) if p.proc is not None]
    cid, key = _new_customer(pair, "pro")
    _within(lambda: pair.statuses("/v1/export/a.csv", api_key=key), 200, "pro feature")
    assert pair.stack.request("/v1/reports/monthly", api_key=key).status == 403
    pair.admin("POST", f"/customers/{cid}/plan", {"plan": "enterprise"})
    _within(lambda: pair.statuses("/v1/reports/monthly", api_key=key), 200, "enterprise feature")
    seen = pair.stack.request("/v1/reports/monthly", api_key=key).json()["headers"]
    assert seen["x-tollhouse-plan"] == "enterprise"
    assert [p.proc.pid for p in (pair.stack.tollhouse, pair.replica) if p.proc] == pids


def test_plan_upgrade_lifts_the_quota_without_restart(pair: Pair) -> None:
    """Free (quota 1000, RateLimit headers) -> pro via the admin API: no quota, export allowed."""
    cid, key = _new_customer(pair, "free")
    _within(lambda: pair.statuses("/v1/search", api_key=key), 200, "free customer")
    resp = pair.stack.request("/v1/search", api_key=key)
    assert '"requests/period";q=1000' in resp.headers["ratelimit-policy"]
    pair.admin("POST", f"/customers/{cid}/plan", {"plan": "pro"})
    _within(lambda: pair.statuses("/v1/export/a.csv", api_key=key), 200, "pro feature")
    resp = pair.stack.request("/v1/search", api_key=key)
    assert resp.json()["headers"]["x-tollhouse-plan"] == "pro"
    assert "ratelimit-policy" not in resp.headers
