"""Readiness follows the spool: not ready while its fact log cannot write, ready again by itself.

The spool is made unwritable for real (CI runs as root, so permissions prove nothing): its
directory is removed and a file put in its place, while serving and before start.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from grpc_health.v1 import health_pb2

from tests.support.app import ISS, app_config, check, health, wait_for
from tollhouse import devkeys
from tollhouse.app import App
from tollhouse.config import load_config

pytestmark = pytest.mark.component  # starts tollhouse's gRPC server


async def _readyz(app: App) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"http://{app.cfg.admin_listen}/readyz") as r:
        return r.status, await r.json()


def _app(tmp_path: Path) -> tuple[App, devkeys.DevKey]:
    key = devkeys.generate_ec("k1")
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    path = tmp_path / "tollhouse.yaml"
    jwt = {"jwks_file": str(tmp_path / "jwks.json")}
    path.write_text(yaml.safe_dump(app_config(tmp_path, jwt)))
    return App(path, load_config(path)), key


async def _code(app: App, token: str) -> str:
    resp = await check(app, token, "/v1/search")
    if resp.HasField("ok_response"):
        return "ok"
    return str(json.loads(resp.denied_response.body)["code"])


async def test_spool_removed_while_serving_means_not_ready_until_it_can_write(
    tmp_path: Path,
) -> None:
    """The spool directory replaced by a file: /readyz 503 naming the spool.

    gRPC health NOT_SERVING and Checks 503 spool_unavailable. Once the file is gone: ready
    again and Checks OK, without a restart.
    """
    app, key = _app(tmp_path)
    tok = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
    spool = tmp_path / "spool"
    await app.start()
    try:

        async def ready() -> bool:
            return (await _readyz(app))[0] == 200

        async def unready() -> bool:
            return (await _readyz(app))[0] == 503

        assert await wait_for(ready, 10)
        assert (await _readyz(app))[1]["spool"]["writable"] is True
        shutil.rmtree(spool)
        spool.write_text("in the way")
        assert await wait_for(unready, 10)
        _, body = await _readyz(app)
        assert body["spool"]["writable"] is False
        assert "deleted" in body["spool"]["error"] or "exists" in body["spool"]["error"]

        async def not_serving() -> bool:
            return await health(app) == health_pb2.HealthCheckResponse.NOT_SERVING

        assert await wait_for(not_serving, 10)
        assert await _code(app, tok) == "spool_unavailable"
        spool.unlink()
        assert await wait_for(ready, 10)
        assert await _code(app, tok) == "ok"
        assert sorted(spool.glob("facts-*.log"))  # the reservation went to a fresh segment
    finally:
        await app.stop()


async def test_spool_that_cannot_be_created_at_start_is_not_ready_then_recovers(
    tmp_path: Path,
) -> None:
    """A file where the spool directory should be: the app starts, not ready; then ready."""
    app, key = _app(tmp_path)
    tok = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
    spool = tmp_path / "spool"
    spool.write_text("in the way")
    await app.start()
    try:
        status, body = await _readyz(app)
        assert status == 503
        assert body["keys_loaded"] is True
        assert body["spool"]["writable"] is False
        assert str(spool) in body["spool"]["error"]
        assert await _code(app, tok) == "spool_unavailable"
        spool.unlink()

        async def ready() -> bool:
            return (await _readyz(app))[0] == 200

        assert await wait_for(ready, 10)
        assert await _code(app, tok) == "ok"
    finally:
        await app.stop()
