"""`serve` in process with a store: it runs the delivery loop, and /readyz reports it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from standardwebhooks import Webhook

from tests.support.app import app_config
from tests.webhook_receiver import Receiver
from tollhouse import devkeys
from tollhouse.app import App
from tollhouse.config import load_config
from tollhouse.store import migrate

pytestmark = pytest.mark.component  # starts tollhouse's gRPC server

TOKEN = "adm-webhooks-token-0123456789abcdef"


async def test_serve_delivers_a_test_webhook_registered_through_the_admin_api(
    tmp_path: Path,
) -> None:
    """Register through /admin/webhooks, POST /test: the running sidecar delivers it, signed.

    /readyz reports the loop (store reachable, nothing pending) and /metrics its queue depth.
    """
    key = devkeys.generate_ec("k1")
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    (tmp_path / "token").write_text(TOKEN)
    store = f"sqlite:///{tmp_path}/store.db"
    await migrate(store)
    doc = app_config(tmp_path, {"jwks_file": str(tmp_path / "jwks.json")})
    doc.update(
        store={"url": store},
        admin={"token_file": str(tmp_path / "token")},
        webhooks={"poll_interval_ms": 50, "backoff_initial_s": 0.1, "backoff_max_s": 1},
    )
    path = tmp_path / "tollhouse.yaml"
    path.write_text(yaml.safe_dump(doc))
    rx = await Receiver().start()
    app = App(path, load_config(path))
    await app.start()
    base = f"http://{app.cfg.admin_listen}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.post(f"{base}/admin/webhooks", json={"url": rx.url}, headers=auth) as r:
                assert r.status == 201
                ep = await r.json()
            async with s.post(f"{base}/admin/webhooks/{ep['id']}/test", headers=auth) as r:
                assert r.status == 202
                event = await r.json()
            deadline = time.monotonic() + 20
            detail: dict[str, dict[str, object]] = {}
            while not rx.seen or detail.get("webhooks", {}).get("pending") != 0:
                assert time.monotonic() < deadline, "the test webhook never arrived"
                await asyncio.sleep(0.05)
                async with s.get(f"{base}/readyz") as r:
                    assert r.status == 200
                    detail = await r.json()
            assert detail["webhooks"]["store_ok"] is True
            async with s.get(f"{base}/metrics") as r:
                assert "tollhouse_webhook_queue_depth" in await r.text()
    finally:
        await app.stop()
        await rx.stop()
    assert rx.ids() == [event["id"]]
    assert Webhook(ep["secret"]).verify(rx.seen[0].body, rx.seen[0].headers)["type"] == (
        "webhook.test"
    )
