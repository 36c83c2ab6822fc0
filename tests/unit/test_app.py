"""The composition root, in process: health, readiness, reflection, hot reload, drain."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import yaml
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from tests.servers import free_port
from tests.support.app import ISS, app_config, check, health, wait_for
from tollhouse import devkeys
from tollhouse.app import App
from tollhouse.config import load_config
from tollhouse.metering.schema import UsageRecord
from tollhouse.metrics import CONFIG_RELOADS

pytestmark = pytest.mark.component  # starts tollhouse's gRPC server


def _jwks_failures(*results: str) -> float:
    """Failed JWKS loads of the test issuer so far, for ``results`` (default: every failure)."""
    return sum(
        REGISTRY.get_sample_value("tollhouse_jwks_refreshes_total", {"issuer": ISS, "result": r})
        or 0.0
        for r in results or ("error", "timeout", "invalid")
    )


def _write(path: Path, doc: dict) -> None:  # type: ignore[type-arg]
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[App, devkeys.DevKey, Path]]:
    key = devkeys.generate_ec("k1")
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    path = tmp_path / "tollhouse.yaml"
    _write(path, app_config(tmp_path, {"jwks_file": str(tmp_path / "jwks.json")}))
    app = App(path, load_config(path))
    await app.start()
    yield app, key, path
    await app.stop()


async def test_health_serving_and_readyz(running: tuple[App, devkeys.DevKey, Path]) -> None:
    """Once keys are loaded gRPC health says SERVING and /readyz answers 200 with detail."""
    app, _, _ = running

    async def serving() -> bool:
        return await health(app) == health_pb2.HealthCheckResponse.SERVING

    assert await wait_for(serving)
    assert await health(app, "envoy.service.auth.v3.Authorization") == 1
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{app.cfg.admin_listen}/readyz") as r:
            assert r.status == 200
            assert (await r.json())["keys_loaded"] is True
        async with s.get(f"http://{app.cfg.admin_listen}/metrics") as r:
            assert "tollhouse_checks_total" in await r.text()


async def test_reflection_lists_services(running: tuple[App, devkeys.DevKey, Path]) -> None:
    """Server reflection names ext_authz, the access-log service and health."""
    app, _, _ = running
    async with grpc.aio.insecure_channel(app.cfg.listen) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        async for resp in stub.ServerReflectionInfo(iter([req]), timeout=2):
            names = {s.name for s in resp.list_services_response.service}
            break
    assert "envoy.service.auth.v3.Authorization" in names
    assert "envoy.service.accesslog.v3.AccessLogService" in names
    assert "grpc.health.v1.Health" in names


async def test_hot_reload_swaps_and_bad_file_keeps_old(
    running: tuple[App, devkeys.DevKey, Path], tmp_path: Path
) -> None:
    """A valid new file moves acme to pro at once; a broken file is refused and pro stays."""
    app, key, path = running
    tok = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
    assert (await check(app, tok, "/v1/export")).denied_response.status.code == 403
    doc = yaml.safe_load(path.read_text())
    doc["customers"]["acme"]["plan"] = "pro"
    _write(path, doc)

    async def allowed() -> bool:
        return (await check(app, tok, "/v1/export")).HasField("ok_response")

    assert await wait_for(allowed)
    version = app.state.catalog.version
    path.write_text("plans: [this is not a mapping\n")
    assert not await app.reload()
    assert app.state.catalog.version == version
    assert (await check(app, tok, "/v1/export")).HasField("ok_response")


async def test_unloaded_keys_mean_not_serving_and_503(tmp_path: Path) -> None:
    """A JWKS URL that never answers: health NOT_SERVING, /readyz 503, Check 503 not 401/200."""
    key = devkeys.generate_ec("k1")
    path = tmp_path / "tollhouse.yaml"
    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    _write(path, app_config(tmp_path, {"jwks_uri": dead, "jwks_timeout_s": 0.2}))
    failed_before = _jwks_failures()
    app = App(path, load_config(path))
    await app.start()
    try:

        async def fetch_failed() -> bool:
            return _jwks_failures() > failed_before

        assert await wait_for(fetch_failed, timeout_s=5.0)
        assert await health(app) == health_pb2.HealthCheckResponse.NOT_SERVING
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://{app.cfg.admin_listen}/readyz") as r,
        ):
            assert r.status == 503
        tok = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
        resp = await check(app, tok, "/v1/search")
        assert resp.denied_response.status.code == 503
        assert json.loads(resp.denied_response.body)["code"] == "keys_unavailable"
    finally:
        await app.stop()


async def test_logs_never_contain_credentials(
    running: tuple[App, devkeys.DevKey, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """At debug level, allowed, refused and malformed credentials never reach a log line."""
    import logging

    from tollhouse.logs import configure_logging

    app, key, _ = running
    configure_logging("debug")
    handler = logging.getLogger("tollhouse").handlers[-1]
    records: list[str] = []
    original = handler.emit
    handler.emit = lambda r: records.append(handler.format(r))  # type: ignore[method-assign]
    try:
        good = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
        forged = good[:-8] + "AAAAAAAA"
        secrets = [good, forged, "th_supersecretapikey", "Basic dXNlcjpwYXNz"]
        for token in secrets:
            await check(app, token, "/v1/search")
        req = ea.CheckRequest()
        req.attributes.request.http.method = "GET"
        req.attributes.request.http.path = "/v1/search"
        req.attributes.request.http.headers["x-api-key"] = "th_supersecretapikey"
        req.attributes.request.http.headers["authorization"] = "Bearer " + good
        async with grpc.aio.insecure_channel(app.cfg.listen) as ch:
            await ea_grpc.AuthorizationStub(ch).Check(req, timeout=2)
        await app.reload()
    finally:
        handler.emit = original  # type: ignore[method-assign]
        configure_logging("info")
    text = "\n".join(records) + capsys.readouterr().err
    assert any("config.reloaded" in r for r in records)  # the capture did see log lines
    for secret in secrets:
        assert secret not in text
        assert secret.split(".")[-1] not in text  # not even the signature part


async def test_reload_that_adds_a_quota_enforces_it(
    running: tuple[App, devkeys.DevKey, Path],
) -> None:
    """A config that starts selling a quota applies it on reload, without a restart."""
    app, key, path = running
    assert app.limiter is None
    doc = yaml.safe_load(path.read_text())
    doc["plans"]["free"]["quotas"] = {"requests": 2}
    _write(path, doc)
    assert await app.reload()
    tok = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
    codes = [(await check(app, tok, "/v1/search")).denied_response.status.code for _ in range(3)]
    assert codes == [0, 0, 429]


def _header_shaped_entry(usage_id: str) -> als_pb2.StreamAccessLogsMessage:
    """Istio's shape: no ext_authz metadata, the usage id in a logged request header."""
    msg = als_pb2.StreamAccessLogsMessage()
    e = msg.http_logs.log_entry.add()
    e.common_properties.upstream_remote_address.socket_address.address = "127.0.0.1"
    e.request.request_headers["x-tollhouse-usage-id"] = usage_id
    e.response.response_code.value = 200
    e.response.response_code_details = "via_upstream"
    return msg


async def test_usage_id_from_request_header_follows_the_config(
    running: tuple[App, devkeys.DevKey, Path],
) -> None:
    """usage_id_from_request_header off ignores the logged header; turned on by a reload, used."""
    app, key, path = running
    tok = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
    ok = (await check(app, tok, "/v1/search")).ok_response
    usage_id = {h.header.key: h.header.value for h in ok.headers}["x-tollhouse-usage-id"]
    async with grpc.aio.insecure_channel(app.cfg.listen) as ch:
        stub = als_pb2_grpc.AccessLogServiceStub(ch)
        await stub.StreamAccessLogs(iter([_header_shaped_entry(usage_id)]), timeout=2)
        await app.metering.spool.counts()
        assert (await app.metering.spool.get(usage_id)).state == UsageRecord.RESERVED
        doc = yaml.safe_load(path.read_text())
        doc["metering"]["usage_id_from_request_header"] = True
        _write(path, doc)
        assert await app.reload()
        await stub.StreamAccessLogs(iter([_header_shaped_entry(usage_id)]), timeout=2)
    await app.metering.spool.counts()
    assert (await app.metering.spool.get(usage_id)).state == UsageRecord.CONFIRMED


async def test_key_removed_from_jwks_file_is_refused_within_seconds(tmp_path: Path) -> None:
    """Rewriting jwks_file without k1 refuses k1's (cached) token within 2 s.

    jwks_refresh_s is 300, so only the file watch can do it; a garbage rewrite then keeps the
    last good set (k2 still verifies, k1 stays refused).
    """
    k1, k2 = devkeys.generate_ec("k1"), devkeys.generate_ec("k2")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(devkeys.jwks(k1, k2)))
    path = tmp_path / "tollhouse.yaml"
    _write(path, app_config(tmp_path, {"jwks_file": str(jwks), "jwks_refresh_s": 300}))
    app = App(path, load_config(path))
    await app.start()
    try:
        old = devkeys.make_token(k1, issuer=ISS, audience="api", subject="acme")
        new = devkeys.make_token(k2, issuer=ISS, audience="api", subject="acme")
        assert (await check(app, old, "/v1/search")).HasField("ok_response")  # now cached
        jwks.write_text(json.dumps(devkeys.jwks(k2)))

        async def old_refused() -> bool:
            return (await check(app, old, "/v1/search")).denied_response.status.code == 401

        assert await wait_for(old_refused, timeout_s=2.0)
        invalid_before = _jwks_failures("invalid")
        jwks.write_text("{not json")

        async def garbage_refused() -> bool:
            return _jwks_failures("invalid") > invalid_before

        assert await wait_for(garbage_refused, timeout_s=5.0)
        assert (await check(app, new, "/v1/search")).HasField("ok_response")
        assert (await check(app, old, "/v1/search")).denied_response.status.code == 401
    finally:
        await app.stop()


async def test_reload_to_a_missing_key_file_is_refused(
    running: tuple[App, devkeys.DevKey, Path], tmp_path: Path
) -> None:
    """A reload whose jwks_file names nothing is rejected and counted; the old config serves."""
    app, key, path = running
    tok = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
    version = app.state.catalog.version
    before = CONFIG_RELOADS.labels("rejected")._value.get()
    doc = yaml.safe_load(path.read_text())
    doc["auth"]["jwt"][0]["jwks_file"] = str(tmp_path / "gone.json")
    doc["customers"]["acme"]["plan"] = "pro"
    _write(path, doc)
    assert not await app.reload()
    assert CONFIG_RELOADS.labels("rejected")._value.get() == before + 1
    assert app.state.catalog.version == version
    assert app.cfg.auth.jwt[0].jwks_file == tmp_path / "jwks.json"
    assert (await check(app, tok, "/v1/search")).HasField("ok_response")
    assert (await check(app, tok, "/v1/export")).denied_response.status.code == 403
