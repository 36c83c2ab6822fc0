"""Directory: the in-memory entitlement set follows the store (SQLite poll, PostgreSQL NOTIFY)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import psycopg
import pytest

from tests.servers import PostgresServer
from tests.support.store import T0, Clock, eventually, fresh_pg_url, make_service
from tollhouse.config import StoreConfig
from tollhouse.store import Directory, SchemaError, StoreService, hash_key
from tollhouse.store.backend import pg_conninfo
from tollhouse.store.service import NOTIFY_CHANNEL
from tollhouse.subscriber import PlanChange, TopUp


@pytest.fixture
async def sqlite_setup(tmp_path: Path) -> AsyncIterator[tuple[StoreService, Directory, Clock]]:
    """A SQLite store with one customer and a started Directory polling it (default 500 ms)."""
    url = f"sqlite://{tmp_path}/store.db"
    clock = Clock()
    svc = await make_service(url, clock)
    await svc.create_customer(
        actor="cli", name="A", plan="free", customer_id="a", anchor=date(2025, 11, 1)
    )
    d = Directory(StoreConfig(url=url), clock=clock)
    await d.start()
    yield svc, d, clock
    await d.stop()
    await svc.backend.close()


async def test_not_migrated_store_is_refused(tmp_path: Path) -> None:
    """A Directory on a store that was never migrated refuses to start."""
    with pytest.raises(SchemaError):
        await Directory(f"sqlite://{tmp_path}/empty.db").start()


async def test_sqlite_key_issue_and_revoke_within_a_second(
    sqlite_setup: tuple[StoreService, Directory, Clock],
) -> None:
    """A new key appears and a revoked key disappears within 1 s by the version poll."""
    svc, d, _ = sqlite_setup
    assert d.ready
    assert d.healthy
    assert d.customer("a").id == "a"
    issued = await svc.issue_key("a", actor="cli")
    digest = hash_key(issued.key)
    assert await eventually(lambda: d.api_key_customer(digest) == "a", 1.0)
    await svc.revoke_key(issued.info.id, actor="cli")
    assert await eventually(lambda: d.api_key_customer(digest) is None, 1.0)
    assert d.api_key_customer("zz" * 32) is None
    assert d.api_key_customer("short") is None


async def test_sqlite_status_plan_overrides_topups(
    sqlite_setup: tuple[StoreService, Directory, Clock],
) -> None:
    """Suspend/reactivate, a future plan change, an override and a top-up all reach memory."""
    svc, d, clock = sqlite_setup

    def status() -> str:
        e = d.customer("a")
        return e.status if e else "missing"

    await svc.set_status("a", "suspended", actor="cli")
    assert await eventually(lambda: status() == "suspended", 1.0)
    await svc.set_status("a", "active", actor="cli")
    assert await eventually(lambda: status() == "active", 1.0)
    await svc.change_plan("a", "pro", actor="cli", effective_at=T0 + 60)
    await svc.set_override("a", "requests", 7, actor="cli")
    await svc.add_topup("a", "requests", 100, actor="cli")
    await svc.add_topup("a", "requests", 50, actor="cli", period="2025-10-01")
    assert await eventually(lambda: bool(d.customer("a") and d.customer("a").topups), 1.0)
    e = d.customer("a")
    assert e is not None
    # The plan history as billing reads it: the first plan from the anchor's midnight UTC.
    nov_1 = 1_761_955_200  # 2025-11-01T00:00:00Z, the anchor
    assert (e.plan, e.changes) == (
        "free",
        (PlanChange("free", nov_1), PlanChange("pro", int(T0) + 60)),
    )
    assert dict(e.quota_overrides) == {"requests": 7}
    assert e.topups == (TopUp(date(2025, 11, 1), "requests", 100),)  # this period's only
    clock.t = T0 + 60
    assert d.customer("a").plan == "pro"  # type: ignore[union-attr]
    detail = d.status_detail()
    assert detail["healthy"] is True
    assert detail["customers"] == 1
    assert detail["version"] == d.version > 0
    assert d.customer("nobody") is None


async def _listeners_reach(url: str, n: int, within_s: float = 5.0) -> bool:
    """Poll PostgreSQL until ``n`` sessions of this database sit in LISTEN on the store channel."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE %s"
    )
    async with await psycopg.AsyncConnection.connect(pg_conninfo(url), autocommit=True) as conn:
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            row = await (await conn.execute(sql, (f"LISTEN {NOTIFY_CHANNEL}%",))).fetchone()
            if row is not None and row[0] >= n:
                return True
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.02)


async def test_pg_two_replicas_follow_notify(postgres_server: PostgresServer) -> None:
    """Two replicas sharing PostgreSQL see a key, its revocation and a suspension within 1 s."""
    url = fresh_pg_url(postgres_server)
    clock = Clock()
    svc = await make_service(url, clock)
    await svc.create_customer(actor="cli", name="A", plan="free", customer_id="a")
    # A long safety-check interval: only LISTEN/NOTIFY can make these deadlines.
    replicas = [Directory(url, clock=clock, pg_check_interval_s=60) for _ in range(2)]
    for r in replicas:
        await r.start()
    try:
        assert all(r.ready for r in replicas)
        assert await _listeners_reach(url, 2)
        issued = await svc.issue_key("a", actor="cli")
        digest = hash_key(issued.key)
        for r in replicas:
            assert await eventually(lambda r=r: r.api_key_customer(digest) == "a", 1.0)
        await svc.revoke_key(issued.info.id, actor="cli")
        await svc.set_status("a", "suspended", actor="cli")
        for r in replicas:
            assert await eventually(lambda r=r: r.api_key_customer(digest) is None, 1.0)
            assert await eventually(
                lambda r=r: getattr(r.customer("a"), "status", "") == "suspended", 1.0
            )
    finally:
        for r in replicas:
            await r.stop()
        await svc.backend.close()
