"""GET /v1/usage for a store customer: plan, overrides and top-ups as this replica serves them."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from aiohttp.test_utils import TestClient, TestServer

from tests.servers import free_port
from tollhouse.billing.usage_api import LOOKUP_FAILED
from tollhouse.config import StoreConfig, parse_config
from tollhouse.store import Directory, StoreService, migrate, open_store
from tollhouse.usage_http import build_usage_app


async def test_store_customer_sees_override_and_topup(tmp_path: Path) -> None:
    """A store customer's quota is the override plus this period's top-up; others are 404."""
    url = f"sqlite:///{tmp_path}/store.db"
    await migrate(url)
    backend = await open_store(url)
    svc = StoreService(backend, clock=time.time, plans={"free"}, meters={"requests"})
    await svc.create_customer(actor="t", name="Zed", plan="free", customer_id="zed")
    await svc.set_override("zed", "requests", 50, actor="t")
    await svc.add_topup("zed", "requests", 7, actor="t")
    await backend.close()
    cfg = parse_config(
        {
            "plans": {
                "free": {
                    "quotas": {"requests": 10},
                    "price": {"meters": {"requests": {"included": 3, "unit_price": "0.01"}}},
                }
            },
            "metering": {"meter": f"sqlite:///{tmp_path}/meter.db"},
        }
    )
    directory = Directory(StoreConfig(url=url))
    await directory.start()
    try:
        app = SimpleNamespace(cfg=cfg, clock=time.time, directory=directory)
        async with TestClient(TestServer(build_usage_app(app))) as client:
            resp = await client.get("/v1/usage", headers={"x-tollhouse-customer": "zed"})
            assert resp.status == 200
            body = await resp.json()
            meter = body["meters"]["requests"]
            assert meter["quota"] == 57
            assert meter["included"] == 10
            assert body["plan"] == "free"
            other = await client.get("/v1/usage", headers={"x-tollhouse-customer": "nobody"})
            assert other.status == 404
            anonymous = await client.get("/v1/usage")
            assert anonymous.status == 401
    finally:
        await directory.stop()


async def test_unreachable_redis_meter_is_503_not_a_stale_answer(tmp_path: Path) -> None:
    """A Redis meter nobody answers on: /v1/usage is 503 usage_unavailable (counted), not 500."""
    port = free_port()  # checked free: nothing listens there
    cfg = parse_config(
        {
            "plans": {"free": {"quotas": {"requests": 10}}},
            "customers": {"zed": {"plan": "free"}},
            "metering": {"meter": f"redis://127.0.0.1:{port}/0"},
            "billing": {"ledger": f"sqlite:///{tmp_path}/ledger.db"},
        }
    )
    app = SimpleNamespace(cfg=cfg, clock=time.time, directory=None)
    before = LOOKUP_FAILED._value.get()  # type: ignore[attr-defined]
    async with TestClient(TestServer(build_usage_app(app))) as client:
        resp = await client.get("/v1/usage", headers={"x-tollhouse-customer": "zed"})
        assert resp.status == 503
        assert (await resp.json(content_type=None))["code"] == "usage_unavailable"
    assert LOOKUP_FAILED._value.get() == before + 1  # type: ignore[attr-defined]
