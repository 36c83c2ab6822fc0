"""Quotas and rate limits end to end (issue 5): what a client sees through real Envoy.

One in-memory stack for the single-replica tests; the Redis tests (two replicas behind one Envoy,
Redis paused mid-load) start their own stack and a dedicated redis-server.
"""

from __future__ import annotations

import calendar
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    HttpResponse,
    LocalStack,
    add_replica,
    authz_failures,
    build_stack,
    tollhouse_checks,
    unavailable_code,
    wait_until,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.e2e  # starts a real Envoy

PROBLEM = "application/problem+json"
Q = 5  # the quota of the `q5` plan


def _plans(config: dict[str, Any], counters: str = "memory") -> dict[str, Any]:
    """The demo catalog plus quota / rate-limit plans and one customer per scenario."""
    plans = {
        **config["plans"],
        "q5": {"features": ["search", "usage"], "quotas": {"requests": Q}},
        "rl": {"features": ["search"], "rate_limits": {"per_second": 2}},
        "shared": {"features": ["search"], "quotas": {"requests": 40}},
        "fc": {
            "features": ["search"],
            "quotas": {"requests": 40},
            "on_counter_error": "fail_closed",
        },
        "loc": {
            "features": ["search"],
            "quotas": {"requests": 100_000},
            "on_counter_error": "local",
        },
    }
    customers = {
        **config["customers"],
        "carol": {"plan": "q5"},
        "dave": {"plan": "rl"},
        "erin": {"plan": "shared"},
        "frank": {"plan": "fc"},
        "gina": {"plan": "loc"},
    }
    return {**config, "plans": plans, "customers": customers, "counters": counters}


@pytest.fixture(scope="module")
def qstack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[LocalStack]:
    """One replica, counters in memory."""
    s = build_stack(
        tmp_path_factory.mktemp(f"quota-{transport}"),
        _plans,
        usage_listener=True,
        transport=transport,
    ).start()
    try:
        yield s
    finally:
        s.stop()


def _month_bounds(now: float) -> tuple[int, int]:
    """(length, end) of the UTC calendar month containing ``now``, in seconds."""
    dt = datetime.fromtimestamp(now, UTC)
    days = calendar.monthrange(dt.year, dt.month)[1]
    start = datetime(dt.year, dt.month, 1, tzinfo=UTC).timestamp()
    return days * 86400, int(start) + days * 86400


def _params(header: str, name: str) -> dict[str, int]:
    """The integer parameters of item ``name`` in a RateLimit / RateLimit-Policy header."""
    for item in header.split(","):
        label, _, rest = item.strip().partition(";")
        if label.strip('"') == name:
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
    raise AssertionError(f"{name!r} not in {header!r}")


def _assert_quota_headers(resp: HttpResponse, remaining: int) -> None:
    length, end = _month_bounds(time.time())
    policy = _params(resp.headers["ratelimit-policy"], "requests/period")
    assert policy == {"q": Q, "w": length}
    state = _params(resp.headers["ratelimit"], "requests/period")
    assert state["r"] == remaining
    assert abs(state["t"] - (end - time.time())) <= 5  # seconds until the period ends


def test_quota_admits_exactly_q_then_429(qstack: LocalStack) -> None:
    """Q requests get 200 with correct RateLimit headers; the rest get 429 naming the limit."""
    token = qstack.token("carol")
    responses = [qstack.request("/v1/search", token=token) for _ in range(Q + 3)]
    assert [r.status for r in responses] == [200] * Q + [429] * 3
    for k, resp in enumerate(responses[:Q], start=1):
        _assert_quota_headers(resp, remaining=Q - k)
    for resp in responses[Q:]:
        assert resp.headers["content-type"].startswith(PROBLEM)
        problem = resp.json()
        assert problem["code"] == "quota_exceeded"
        assert problem["limit"] == "requests/period"
        assert problem["status"] == 429
        assert int(resp.headers["retry-after"]) >= 1
        _assert_quota_headers(resp, remaining=0)


def test_free_usage_route_is_not_counted_against_the_quota(qstack: LocalStack) -> None:
    """A feature with no meters (/v1/usage) passes ext_authz even when the quota is spent."""
    token = qstack.token("carol")
    codes = [qstack.request("/v1/search", token=token).status for _ in range(Q + 1)]
    assert codes[-1] == 429, codes  # spent here, whatever ran before
    resp = qstack.request("/v1/usage", token=token)
    assert resp.status == 200, resp.body[:300]
    doc = resp.json()
    assert doc["customer"] == "carol"
    assert doc["meters"]["requests"]["quota"] == Q


def test_rate_limit_per_second_is_429(qstack: LocalStack) -> None:
    """A burst above per_second: the first 2 pass, then 429 naming per_second, with headers."""
    token = qstack.token("dave")
    responses = [qstack.request("/v1/search", token=token) for _ in range(6)]
    statuses = [r.status for r in responses]
    assert statuses[:2] == [200, 200]
    limited = [r for r in responses if r.status == 429]
    assert limited, statuses
    for resp in limited:
        assert resp.json()["limit"] == "per_second"
        assert int(resp.headers["retry-after"]) >= 1
        assert _params(resp.headers["ratelimit-policy"], "per_second") == {"q": 2, "w": 1}
        assert _params(resp.headers["ratelimit"], "per_second")["r"] == 0
    assert _params(responses[0].headers["ratelimit-policy"], "per_second") == {"q": 2, "w": 1}


def _hammer(stack: LocalStack, customer: str, total: int, threads: int = 4) -> list[int]:
    """``total`` requests from ``threads`` concurrent clients; the statuses."""
    token = stack.token(customer)
    out: list[int] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        for _ in range(n):
            status = stack.request("/v1/search", token=token).status
            with lock:
                out.append(status)

    workers = [threading.Thread(target=run, args=(total // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    return out


def test_two_replicas_sharing_redis_hold_the_quota(tmp_path: Path, transport: str) -> None:
    """Two replicas behind one Envoy, counters in Redis: admitted <= Q (over-admission bound 0)."""
    redis_srv = RedisServer(tmp_path / "redis").start()
    stack = build_stack(tmp_path / "stack", lambda c: _plans(c, redis_srv.url), transport=transport)
    replica = add_replica(stack, "replica-2")
    try:
        stack.start()
        replica.start()
        statuses = _hammer(stack, "erin", 120)
        assert set(statuses) <= {200, 429}, statuses
        admitted = statuses.count(200)
        print(f"two replicas admitted {admitted} of 120 with Q=40")
        assert 0 < admitted <= 40
        checks = [_checks_served(p.metrics()) for p in (stack.tollhouse, replica)]
        assert all(n > 0 for n in checks), checks  # Envoy spread the Checks over both
    finally:
        stack.stop()
        replica.stop()
        redis_srv.stop()


def _checks_served(metrics: str) -> float:
    """Sum of the Check decisions a replica reports on /metrics."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("tollhouse_checks_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_redis_paused_fail_closed_is_503_local_keeps_serving(
    tmp_path: Path, transport: str
) -> None:
    """SIGSTOP Redis mid-load: fail_closed ends in 503, local stays 200, no ext_authz error."""
    redis_srv = RedisServer(tmp_path / "redis").start()
    stack = build_stack(
        tmp_path / "stack", lambda c: _plans(c, redis_srv.url), transport=transport
    ).start()
    try:
        fc, loc = stack.token("frank"), stack.token("gina")
        for _ in range(5):  # leases taken while Redis answers
            assert stack.request("/v1/search", token=fc).status == 200
            assert stack.request("/v1/search", token=loc).status == 200
        redis_srv.pause()
        try:
            fc_statuses = [stack.request("/v1/search", token=fc) for _ in range(50)]
            loc_statuses = [stack.request("/v1/search", token=loc).status for _ in range(50)]
        finally:
            redis_srv.resume()
        assert loc_statuses == [200] * 50
        codes = [r.status for r in fc_statuses]
        assert set(codes) <= {200, 503}, codes
        assert codes[-10:] == [503] * 10  # once its lease is spent, fail_closed refuses
        refused = [r for r in fc_statuses if r.status == 503]
        assert {r.problem_code() for r in refused} == {
            unavailable_code(stack, "counters_unavailable")
        }
        assert tollhouse_checks(stack, "error", "counters_unavailable") >= len(refused)
        assert authz_failures(stack) == 0  # no Check timed out: tollhouse answered each
        wait_until(
            lambda: stack.request("/v1/search", token=fc).status,
            lambda s: s == 200,
            what="fail_closed plan serving again after Redis resumed",
        )
    finally:
        stack.stop()
        redis_srv.stop()
