"""Two tollhouse replicas behind one Envoy, the access log streamed to one of them, Redis meter.

Checks are balanced over both replicas; Envoy's one access-log stream goes to the first. Every
record, whichever replica admitted it, must end CONFIRMED with its header units, exactly once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    UsageRecord,
    add_replica,
    build_stack,
    redis_stream_records,
    wait_until,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.e2e  # starts a real Envoy


def _redis_metering(url: str) -> Any:
    def edit(config: dict[str, Any]) -> dict[str, Any]:
        metering = {
            **config["metering"],
            "meter": url,
            "unconfirmed_after_s": 20,
            "flush_interval_ms": 50,
        }
        return {**config, "metering": metering}

    return edit


def _checks_served(metrics: str) -> float:
    """Sum of the Check decisions a replica reports on /metrics."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("tollhouse_checks_total{")
    )


def test_access_log_to_one_replica_confirms_every_record(tmp_path: Path) -> None:
    """40 token-metered requests over two replicas: 40 CONFIRMED records, tokens included, once."""
    redis_srv = RedisServer(tmp_path / "redis").start()
    stack = build_stack(tmp_path / "stack", _redis_metering(redis_srv.url))
    replica = add_replica(stack, "replica-2", als_to_first=True)
    case = uuid.uuid4().hex[:12]
    try:
        stack.start()
        replica.start()
        tokens: dict[str, int] = {}
        for i in range(40):
            resp = stack.request(f"/v1/reports/{case}-{i}?tokens={1000 + i}", api_key=stack.api_key)
            assert resp.status == 200, (resp.status, resp.body[:200])
            tokens[str(resp.json()["headers"]["x-tollhouse-usage-id"])] = 1000 + i
        streamed = wait_until(
            lambda: redis_stream_records(redis_srv.url),
            lambda recs: set(tokens) <= {r.usage_id for r in recs},
            timeout_s=20,
            what="every usage id in the meter stream",
        )
        checks = [_checks_served(p.metrics()) for p in (stack.tollhouse, replica)]
        mine = [r for r in streamed if r.usage_id in tokens]
        admitted_by = Counter(r.instance for r in mine)
    finally:
        stack.stop()
        replica.stop()
        redis_srv.stop()
    assert all(n > 0 for n in checks), checks  # Envoy spread the Checks over both
    assert len(admitted_by) == 2, admitted_by  # both replicas admitted some of the 40
    assert Counter(r.usage_id for r in mine) == Counter(set(tokens))  # each id exactly once
    for rec in mine:
        assert rec.state == UsageRecord.CONFIRMED, rec
        assert rec.billable
        assert dict(rec.units) == {"requests": 1, "tokens": tokens[rec.usage_id]}
