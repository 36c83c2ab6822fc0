"""Hot reload in a running app with an entitlement store: plans in use, start-only keys.

Real components: a migrated SQLite store with customers, the App with its gRPC listener, and
Checks over gRPC.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import REGISTRY

from tests.servers import free_port
from tests.support.app import ISS, check, wait_for
from tollhouse import devkeys
from tollhouse.app import App
from tollhouse.config import load_config
from tollhouse.store import StoreService, migrate, open_store

pytestmark = pytest.mark.component  # starts tollhouse's gRPC server

Running = tuple[App, devkeys.DevKey, Path, StoreService]


def _doc(tmp_path: Path) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "auth": {
            "jwt": [{"issuer": ISS, "audiences": ["api"], "jwks_file": str(tmp_path / "jwks.json")}]
        },
        "features": {"search": [{"methods": ["GET"], "path": "/v1/search"}]},
        "plans": {
            "free": {"features": ["search"]},
            "pro": {"features": ["search"]},
            "legacy": {"features": ["search"]},
            "spare": {"features": ["search"]},
        },
        "store": {"url": f"sqlite://{tmp_path}/store.db", "poll_interval_ms": 100},
        "metering": {"enabled": False},
        "reload_settle_s": 3600,  # the watcher never applies by itself: each test reloads
        "shutdown_grace_s": 1,
    }


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc))


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """Customers acme and beta on pro, gone (cancelled) on legacy; the app started, ready."""
    key = devkeys.generate_ec("k1")
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    url = f"sqlite://{tmp_path}/store.db"
    await migrate(url)
    svc = StoreService(await open_store(url), clock=time.time)
    for cid in ("acme", "beta"):
        await svc.create_customer(actor="test", name=cid, plan="pro", customer_id=cid)
    await svc.create_customer(actor="test", name="gone", plan="legacy", customer_id="gone")
    await svc.set_status("gone", "cancelled", actor="test")
    path = tmp_path / "tollhouse.yaml"
    _write(path, _doc(tmp_path))
    app = App(path, load_config(path))
    await app.start()

    async def ready() -> bool:
        return app.ready

    assert await wait_for(ready)
    yield app, key, path, svc
    await app.stop()
    await svc.backend.close()


async def test_renaming_a_plan_store_customers_are_on_is_refused(running: Running) -> None:
    """Plan pro renamed gold while acme and beta are on it: refused, counted, old config serves.

    Without the refusal both would get 503 unknown_plan from the next Check on.
    """
    app, key, path, _ = running
    tok = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
    version = app.state.catalog.version
    before = _metric("tollhouse_config_reload_rejected_total", reason="plan_in_use")
    doc = yaml.safe_load(path.read_text())
    doc["plans"]["gold"] = doc["plans"].pop("pro")
    _write(path, doc)
    assert not await app.reload()
    assert _metric("tollhouse_config_reload_rejected_total", reason="plan_in_use") == before + 1
    assert app.state.catalog.version == version
    assert "pro" in app.cfg.plans
    assert (await check(app, tok, "/v1/search")).HasField("ok_response")


async def test_removing_plans_no_live_customer_is_on_is_applied(running: Running) -> None:
    """Dropping an unused plan, and one only a cancelled customer was on, is applied."""
    app, _, path, _ = running
    doc = yaml.safe_load(path.read_text())
    del doc["plans"]["spare"], doc["plans"]["legacy"]
    _write(path, doc)
    assert await app.reload()
    assert set(app.cfg.plans) == {"free", "pro"}


async def test_a_scheduled_plan_change_keeps_its_plan_in_use(running: Running) -> None:
    """Customer beta moves to spare next month: spare is in use already, cannot be dropped."""
    app, _, path, svc = running
    await svc.change_plan("beta", "spare", actor="test", effective_at=time.time() + 30 * 86400)

    async def synced() -> bool:
        ent = app.directory.customer("beta")
        return ent is not None and len(ent.changes) == 2

    assert await wait_for(synced)
    doc = yaml.safe_load(path.read_text())
    del doc["plans"]["spare"]
    _write(path, doc)
    assert not await app.reload()
    assert "spare" in app.cfg.plans


async def test_start_only_keys_are_reported_and_keep_their_running_value(
    running: Running, tmp_path: Path
) -> None:
    """A reload that changes store, admin, counters and a listener applies the rest.

    Those keys keep the running value; the log names them, the gauge is 1 for each and
    /readyz lists them; a file that changes them back clears the gauge.
    """
    app, _, path, _ = running
    original = yaml.safe_load(path.read_text())
    doc = yaml.safe_load(path.read_text())
    doc["store"]["url"] = f"sqlite://{tmp_path}/other.db"
    (tmp_path / "admin-token").write_text("a-token\n")  # serve refuses a missing or empty one
    doc["admin"] = {"token_file": str(tmp_path / "admin-token")}
    doc["counters"] = "redis://127.0.0.1:1/0"
    doc["usage_listen"] = f"127.0.0.1:{free_port()}"
    doc["plans"]["platinum"] = {"features": ["search"]}
    _write(path, doc)
    assert await app.reload()
    assert "platinum" in app.cfg.plans
    assert app.cfg.store is not None
    assert app.cfg.store.url == original["store"]["url"]
    assert app.cfg.admin.token_file is None
    assert app.cfg.counters == "memory"
    assert app.cfg.usage_listen is None
    for field in ("store", "admin", "counters", "usage_listen"):
        assert _metric("tollhouse_config_restart_needed", field=field) == 1, field
    async with aiohttp.ClientSession() as s, s.get(f"http://{app.cfg.admin_listen}/readyz") as r:
        body = await r.json()
    assert body["restart_needed"] == ["admin", "counters", "store", "usage_listen"]
    _write(path, original)
    assert await app.reload()
    assert _metric("tollhouse_config_restart_needed", field="store") == 0
    assert "restart_needed" not in app.ready_detail()
