"""The admin API over real HTTP: bearer auth, the flow, problem+json errors, no secret logged."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.servers import free_port
from tests.support.admin import TOKEN, Admin
from tollhouse.store import Directory, hash_key, migrate


async def test_missing_or_wrong_token_is_401_and_never_logged(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    """No token or a wrong one gets 401 problem+json with WWW-Authenticate; no token is logged."""
    caplog.set_level(logging.DEBUG, logger="tollhouse")
    wrong = "wrong-" + TOKEN
    for token in (None, wrong, ""):
        status, headers, body = await admin.call("GET", "/customers", token=token)
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert headers["Content-Type"].startswith("application/problem+json")
        assert body["code"] == "unauthorized"  # type: ignore[index]
    async with admin.session.get(
        admin.base + "/customers", headers={"Authorization": f"Basic {TOKEN}"}
    ) as r:
        assert r.status == 401
    status, _, _ = await admin.call("GET", "/customers")
    assert status == 200
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert TOKEN not in logged
    assert wrong not in logged
    assert "admin.unauthorized" in logged


async def test_full_flow_reaches_a_directory(admin: Admin) -> None:
    """Create, plan, status, key, override, top-up, revoke: all visible to a Directory."""
    d = Directory(admin.store_url, poll_interval_ms=100)
    await d.start()
    try:
        status, _, c = await admin.call(
            "POST",
            "/customers",
            {
                "id": "acme",
                "name": "Acme",
                "plan": "free",
                "anchor": "2025-11-01",
                "metadata": {"crm": 1},
            },
        )
        assert status == 201
        assert c["status"] == "active"
        status, _, k = await admin.call("POST", "/customers/acme/keys")
        assert status == 201
        key = k["key"]  # type: ignore[index]
        assert (await admin.call("POST", "/customers/acme/plan", {"plan": "pro"}))[0] == 200
        assert (await admin.call("POST", "/customers/acme/status", {"status": "suspended"}))[
            0
        ] == 200
        assert (await admin.call("PUT", "/customers/acme/overrides/requests", {"units": 9}))[
            0
        ] == 200
        assert (
            await admin.call("POST", "/customers/acme/topups", {"meter": "requests", "units": 5})
        )[0] == 201
        await _until(lambda: d.api_key_customer(hash_key(key)) == "acme")
        e = d.customer("acme")
        assert e is not None
        assert (e.plan, e.status) == ("pro", "suspended")
        assert dict(e.quota_overrides) == {"requests": 9}
        status, _, listed = await admin.call("GET", "/customers/acme/keys")
        assert key not in str(listed)
        assert listed["items"][0]["prefix"] == key[:10]
        assert (await admin.call("POST", f"/keys/{k['id']}/revoke"))[0] == 200  # type: ignore[index]
        await _until(lambda: d.api_key_customer(hash_key(key)) is None)
        _, _, audit = await admin.call("GET", "/audit?target=acme")
        actor = "admin:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
        assert {a["actor"] for a in audit["items"]} == {actor}  # type: ignore[index]
    finally:
        await d.stop()


async def _until(pred: object) -> None:
    from tests.support.store import eventually

    assert await eventually(pred, 1.0)  # type: ignore[arg-type]


async def test_errors_are_problem_json_with_codes(admin: Admin) -> None:
    """Bad JSON, invalid fields, unknown ids, conflicts: each has its status and stable code."""
    await admin.call("POST", "/customers", {"id": "a", "name": "A", "plan": "free"})
    cases = [
        ("POST", "/customers", {"id": "a", "name": "A", "plan": "free"}, 409, "already_exists"),
        ("POST", "/customers", {"name": "B", "plan": "gold"}, 422, "unknown_plan"),
        ("POST", "/customers", {"name": 5, "plan": "free"}, 422, "invalid"),
        ("POST", "/customers", [1, 2], 400, "bad_json"),
        ("GET", "/customers/nobody", None, 404, "not_found"),
        ("POST", "/customers/a/status", {"status": "frozen"}, 422, "invalid"),
        ("PUT", "/customers/a/overrides/bytes", {"units": 1}, 422, "unknown_meter"),
        ("PUT", "/customers/a/overrides/requests", {"units": -1}, 422, "invalid"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("DELETE", "/customers", None, 405, "method_not_allowed"),
    ]
    for method, path, body, status, code in cases:
        got, headers, problem = await admin.call(method, path, body)
        assert (got, problem["code"]) == (status, code), (method, path)  # type: ignore[index]
        assert headers["Content-Type"].startswith("application/problem+json")
    async with admin.session.post(
        admin.base + "/customers", data=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as r:
        assert r.status == 400
        assert (await r.json(content_type=None))["code"] == "bad_json"


async def test_build_admin_app_from_config(tmp_path: Path) -> None:
    """build_admin_app(cfg) serves with the config's token file and refuses off-catalog plans."""
    from tollhouse.admin import build_admin_app
    from tollhouse.config import parse_config

    (tmp_path / "tok").write_text(TOKEN)
    cfg = parse_config(
        {
            "plans": {"free": {}},
            "store": {"url": "sqlite:///./s.db"},
            "admin": {"token_file": "tok"},
        },
        base_dir=tmp_path,
    )
    assert cfg.store is not None
    await migrate(cfg.store.url)
    root = web.Application()
    root.add_subapp("/admin", build_admin_app(cfg))
    runner = web.AppRunner(root)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as s:
            a = Admin(f"http://127.0.0.1:{port}/admin", s, cfg.store.url)
            assert (await a.call("POST", "/customers", {"name": "A", "plan": "free"}))[0] == 201
            status, _, body = await a.call("POST", "/customers", {"name": "B", "plan": "pro"})
            assert (status, body["code"]) == (422, "unknown_plan")  # type: ignore[index]
            assert (await a.call("GET", "/customers", token="nope"))[0] == 401
    finally:
        await runner.cleanup()


async def test_admin_catalog_follows_config_reloads(tmp_path: Path) -> None:
    """A plan added by a hot reload is accepted by the admin API without a restart."""
    from tollhouse.admin import build_admin_app
    from tollhouse.config import parse_config

    (tmp_path / "tok").write_text(TOKEN)
    base = {"store": {"url": "sqlite:///./s.db"}, "admin": {"token_file": "tok"}}
    live = {"cfg": parse_config({"plans": {"free": {}}, **base}, base_dir=tmp_path)}
    cfg = live["cfg"]
    assert cfg.store is not None
    await migrate(cfg.store.url)
    root = web.Application()
    root.add_subapp("/admin", build_admin_app(cfg, current=lambda: live["cfg"]))
    runner = web.AppRunner(root)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as s:
            a = Admin(f"http://127.0.0.1:{port}/admin", s, cfg.store.url)
            status, _, body = await a.call("POST", "/customers", {"name": "B", "plan": "pro"})
            assert (status, body["code"]) == (422, "unknown_plan")  # type: ignore[index]
            live["cfg"] = parse_config(
                {"plans": {"free": {}, "pro": {}}, **base}, base_dir=tmp_path
            )
            assert (await a.call("POST", "/customers", {"name": "B", "plan": "pro"}))[0] == 201
    finally:
        await runner.cleanup()


async def test_stripe_customer_id_is_set_kept_and_cleared(admin: Admin) -> None:
    """PATCH sets stripe_customer_id, other PATCHes keep it, null clears it, a bad one is 422."""
    assert (await admin.call("POST", "/customers", {"id": "acme", "name": "Acme", "plan": "free"}))[
        0
    ] == 201
    status, _, c = await admin.call("PATCH", "/customers/acme", {"stripe_customer_id": "cus_A1"})
    assert (status, c["stripe_customer_id"]) == (200, "cus_A1")  # type: ignore[index]
    _, _, c = await admin.call("PATCH", "/customers/acme", {"name": "Acme Ltd"})
    assert c["stripe_customer_id"] == "cus_A1"  # type: ignore[index]
    status, _, p = await admin.call("PATCH", "/customers/acme", {"stripe_customer_id": "acme"})
    assert (status, p["code"]) == (422, "invalid")  # type: ignore[index]
    assert "stripe_customer_id" in p["detail"]  # type: ignore[index]
    _, _, c = await admin.call("PATCH", "/customers/acme", {"stripe_customer_id": None})
    assert c["stripe_customer_id"] is None  # type: ignore[index]
    _, _, audit = await admin.call("GET", "/audit?target=acme")
    assert [
        a["after"]["stripe_customer_id"]
        for a in audit["items"]  # type: ignore[index]
        if a["action"] == "customer.update"
    ] == ["cus_A1", "cus_A1", None]
