"""``GET /v1/usage`` with a Redis meter, through real Envoy (issue 13 item 12), and no store.

The plan prices every request and sells no quota, so no live quota counter exists: what the
usage endpoint shows before any billing run comes from the meter stream itself, and after a
billing consume from the ledger, never from both.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.harness import (
    LocalStack,
    build_stack,
    redis_stream_records,
    wait_until,
)
from tests.servers import RedisServer
from tollhouse.demo.stack import find_binary
from tollhouse.metering.schema import STREAM_KEY

pytestmark = pytest.mark.e2e  # starts a real Envoy

SENT = 3


def _redis_meter(config: dict[str, Any], url: str) -> dict[str, Any]:
    metered = {
        "features": ["search", "usage"],
        "price": {"currency": "USD", "meters": {"requests": {"unit_price": "0.01"}}},
    }
    metering = {
        **config["metering"],
        "meter": url,
        "unconfirmed_after_s": 1,
        "flush_interval_ms": 50,
    }
    return {
        **config,
        "plans": {**config["plans"], "metered": metered},
        "customers": {**config["customers"], "mia": {"plan": "metered"}},
        "metering": metering,
    }


@pytest.fixture(scope="module")
def rstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, str]]:
    """A redis-server as the meter, then tollhouse (usage listener on) and Envoy."""
    workdir = tmp_path_factory.mktemp("usage-redis")
    redis_srv = RedisServer(workdir / "redis").start()
    stack = build_stack(
        workdir / "stack", lambda c: _redis_meter(c, redis_srv.url), usage_listener=True
    )
    try:
        stack.start()
        yield stack, redis_srv.url
    finally:
        stack.stop()
        redis_srv.stop()


def _requests(doc: dict[str, Any]) -> tuple[int, str, str]:
    meter = doc["meters"]["requests"]
    return meter["used"], meter["charges"], doc["charges_so_far"]


def _unread_by_billing(url: str) -> int:
    """Stream entries after the billing group's last-delivered id."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        groups = client.xinfo_groups(STREAM_KEY)
        last = next(
            g["last-delivered-id"]
            for g in groups
            if g["name"] in (b"tollhouse-billing", "tollhouse-billing")
        )
        return len(client.xrange(STREAM_KEY, min=b"(" + last, max="+"))
    finally:
        client.close()


def test_charges_so_far_move_before_and_after_a_billing_run(
    rstack: tuple[LocalStack, str], tmp_path: Path
) -> None:
    """Metered requests show in /v1/usage once streamed; a billing consume does not count twice."""
    stack, url = rstack
    token = stack.token("mia")
    assert [stack.request("/v1/search", token=token).status for _ in range(SENT)] == [200] * SENT
    wait_until(
        lambda: [r for r in redis_stream_records(url) if r.customer == "mia"],
        lambda rs: len(rs) == SENT,
        timeout_s=15,
        what="records in the meter stream",
    )
    doc = stack.request("/v1/usage", token=token).json()
    assert _requests(doc) == (SENT, "0.03", "0.03")
    bill = subprocess.run(
        [
            str(find_binary("tollhouse")),
            "bill",
            "--config",
            str(stack.tollhouse.config_path),
            "--preview",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": str(Path(sys.executable).parent)},
    )
    assert bill.returncode == 0, bill.stderr[-1000:]
    assert _unread_by_billing(url) == 0  # the ledger now holds them: the tail must drop them
    assert _requests(stack.request("/v1/usage", token=token).json()) == (SENT, "0.03", "0.03")
    assert stack.request("/v1/search", token=token).status == 200
    wait_until(
        lambda: _requests(stack.request("/v1/usage", token=token).json()),
        lambda got: got == (SENT + 1, "0.04", "0.04"),
        timeout_s=15,
        what="a request after the billing run counted once",
    )


def test_no_store_means_no_store_health_series(rstack: tuple[LocalStack, str]) -> None:
    """Item 13: without an entitlement store, /metrics has no tollhouse_store_healthy at all."""
    stack, _ = rstack
    text = stack.tollhouse.metrics()
    assert "tollhouse_checks_total" in text  # the scrape itself worked
    assert "tollhouse_store_healthy" not in text
