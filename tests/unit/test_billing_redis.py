"""Redis meter stream -> ledger via a consumer group, on a real redis-server (unique keys)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from tests.servers import RedisServer
from tests.support.billing import (
    DEC_2026,
    JAN_2027,
    NOV_2026,
    fixed_usage,
    make_config,
    record,
)
from tests.support.ledger import Crash, CrashAt
from tollhouse.billing.job import BillingResult, JobOptions, run_billing
from tollhouse.billing.ledger import open_ledger
from tollhouse.config import Config
from tollhouse.metering.schema import FIELD_RECORD, FIELD_USAGE_ID


@pytest.fixture
def keys() -> tuple[str, str]:
    """Return a unique stream key and dead-letter key (the Redis server is shared)."""
    base = f"test:{uuid.uuid4().hex[:10]}"
    return f"{base}:usage", f"{base}:dead"


def _xadd(r: redis.Redis, stream: str, records: list) -> list[str]:  # type: ignore[type-arg]
    return [
        r.xadd(
            stream, {FIELD_USAGE_ID: rec.usage_id, FIELD_RECORD: rec.SerializeToString()}
        ).decode()
        for rec in records
    ]


def _run(
    cfg: Config, keys: tuple[str, str], out: Path | None, consumer: str, hook: CrashAt | None = None
) -> BillingResult:
    opts = JobOptions(
        stream_key=keys[0],
        dead_key=keys[1],
        consumer=consumer,
        batch=300,
        claim_idle_ms=0,
        redis_timeout_s=5.0,
        **({"hook": hook} if hook else {}),
    )  # type: ignore[arg-type]
    return run_billing(
        cfg, period="2026-11", out_dir=out, preview=False, clock=lambda: JAN_2027, options=opts
    )


def _files(res: BillingResult) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for inv in res.invoices for f in inv.files}


def test_consumer_group_exactly_once_across_crashes(
    redis_server: RedisServer, keys: tuple[str, str], tmp_path: Path
) -> None:
    """Crash after commit, reclaim and crash before commit, rerun twice: billed once, same bytes."""
    r = redis.Redis.from_url(redis_server.url)
    usage = fixed_usage()
    _xadd(r, keys[0], usage)
    r.xgroup_create(keys[0], "baseline", id="0")
    cfg = make_config(tmp_path, meter=redis_server.url)
    with pytest.raises(Crash):
        _run(cfg, keys, None, "c1", CrashAt("after_commit", 2))
    # batch 1 committed and acked; batch 2 committed, never acked
    assert r.xpending(keys[0], cfg.billing.consumer_group)["pending"] == 300
    with pytest.raises(Crash):
        _run(cfg, keys, None, "c2", CrashAt("before_commit", 2))
    first = _run(cfg, keys, tmp_path / "a", "c3")
    second = _run(cfg, keys, tmp_path / "b", "c3")
    assert first.ok, first.problems
    assert second.consumed == 0
    assert r.xpending(keys[0], cfg.billing.consumer_group)["pending"] == 0
    ledger = open_ledger(cfg.billing.ledger)
    try:
        got = ledger.meter_totals("beta", NOV_2026 * 1000, DEC_2026 * 1000)
    finally:
        ledger.close()
    beta = [u for u in usage if u.customer == "beta" and u.billable]
    assert got == {"requests": (sum(u.units["requests"] for u in beta), len(beta))}
    assert r.xlen(keys[0]) == len(usage)  # the baseline group has read nothing: nothing trimmed
    base_cfg = make_config(tmp_path / "base", meter=redis_server.url).model_copy(
        update={
            "billing": cfg.billing.model_copy(
                update={
                    "consumer_group": "baseline",
                    "ledger": f"sqlite:///{tmp_path}/base/ledger.db",
                }
            )
        }
    )
    clean = _run(base_cfg, keys, tmp_path / "c", "b1")
    assert _files(first) == _files(second) == _files(clean)
    assert r.xlen(keys[0]) == 0  # every group acked everything: trimmed by MINID


def test_poison_and_overdelivered_records_are_dead_lettered(
    redis_server: RedisServer, keys: tuple[str, str], tmp_path: Path
) -> None:
    """Unparsable and too-often-delivered entries go to the dead-letter stream, acked, counted."""
    r = redis.Redis.from_url(redis_server.url)
    cfg = make_config(tmp_path, meter=redis_server.url)
    cfg = cfg.model_copy(update={"billing": cfg.billing.model_copy(update={"max_deliveries": 2})})
    group = cfg.billing.consumer_group
    r.xgroup_create(keys[0], group, id="0", mkstream=True)
    sticky = _xadd(r, keys[0], [record("sticky", "beta", NOV_2026 + 5, {"requests": 7})])[0]
    r.xreadgroup(group, "dead-pod", {keys[0]: ">"})
    for _ in range(2):  # delivered 3 times to consumers that died without acking
        r.xautoclaim(keys[0], group, "dead-pod", 0, start_id="0-0")
    bad = r.xadd(keys[0], {FIELD_USAGE_ID: "junk", FIELD_RECORD: b"\xff\xfe not a proto"}).decode()
    _xadd(r, keys[0], [record("good", "beta", NOV_2026 + 6, {"requests": 3})])
    before = {
        k: REGISTRY.get_sample_value("tollhouse_billing_dead_lettered_total", {"reason": k}) or 0.0
        for k in ("unparsable", "max_deliveries")
    }
    res = _run(cfg, keys, None, "c1")
    assert res.dead_lettered == 2
    dead = {e[1][b"source_id"].decode(): e[1] for e in r.xrange(keys[1])}
    assert dead[bad][b"reason"] == b"unparsable"
    assert dead[sticky][b"reason"] == b"max_deliveries"
    assert dead[sticky][FIELD_USAGE_ID.encode()] == b"sticky"
    assert r.xpending(keys[0], group)["pending"] == 0
    for reason in before:
        after = REGISTRY.get_sample_value(
            "tollhouse_billing_dead_lettered_total", {"reason": reason}
        )
        assert after == before[reason] + 1
    ledger = open_ledger(cfg.billing.ledger)
    try:
        assert ledger.meter_totals("beta", NOV_2026 * 1000, DEC_2026 * 1000) == {"requests": (3, 1)}
    finally:
        ledger.close()


def test_trim_keeps_what_another_group_still_needs(
    redis_server: RedisServer, keys: tuple[str, str], tmp_path: Path
) -> None:
    """XTRIM MINID stops at the oldest entry another group still has pending."""
    r = redis.Redis.from_url(redis_server.url)
    ids = _xadd(
        r, keys[0], [record(f"t{i}", "beta", NOV_2026 + i, {"requests": 1}) for i in range(20)]
    )
    r.xgroup_create(keys[0], "slow", id="0")
    r.xreadgroup("slow", "s1", {keys[0]: ">"}, count=5)
    r.xack(keys[0], "slow", *ids[:3])  # slow group: 3 acked, 2 pending, 15 unread
    res = _run(make_config(tmp_path, meter=redis_server.url), keys, None, "c1")
    assert res.consumed == 20
    left = [e[0].decode() for e in r.xrange(keys[0])]
    assert left == ids[3:]
