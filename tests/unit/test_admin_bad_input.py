"""The admin API answers bad input with a 4xx problem+json, never a 500 or text/plain.

Over real HTTP against the admin sub-app on a SQLite store (the `admin` fixture of
test_admin_api), and the same id rule in the store service used by the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.admin import TOKEN, Admin, start_admin
from tollhouse.admin.validate import check_id
from tollhouse.store import StoreService, migrate, open_store
from tollhouse.store.models import ServiceError

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Admin]:
    """The admin API on a SQLite store with plans free and pro."""
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN)
    url = f"sqlite://{tmp_path}/store.db"
    runner, base = await start_admin(url, token_file)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield Admin(base, s, url)
    await runner.cleanup()


async def _raw(
    admin: Admin,
    method: str,
    path: str,
    body: bytes | None = None,
) -> tuple[int, str, dict[str, object]]:
    """Send ``body`` as is (application/json); return status, content type and parsed body."""
    headers = {**AUTH, "Content-Type": "application/json"}
    async with admin.session.request(method, admin.base + path, data=body, headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.json(content_type=None)


async def test_deeply_nested_json_body_is_400_bad_json(api: Admin) -> None:
    """A body nested deeper than the JSON parser's stack (30,000 arrays) is 400 bad_json."""
    for body in (b"[" * 30000 + b"]" * 30000, b'{"metadata":' + b"[" * 30000):
        status, ctype, problem = await _raw(api, "POST", "/customers", body)
        assert status == 400, problem
        assert ctype.startswith("application/problem+json")
        assert problem["code"] == "bad_json"


@pytest.mark.parametrize(
    "query",
    [
        "limit=%C2%B2",
        "limit=%D9%A3",
        "after_id=%EF%BC%95",
        "limit=1e3",
        "limit=-1",
        "limit=99999999999999999999999",
    ],
)
async def test_non_ascii_or_bad_numbers_in_query_are_422(api: Admin, query: str) -> None:
    """``?limit=²`` (isdigit() but not int()), Arabic-Indic or full-width digits: 422 invalid."""
    path = "/audit?" + query if query.startswith("after_id") else "/customers?" + query
    status, _, problem = await api.call("GET", path)
    assert (status, problem["code"]) == (422, "invalid"), (query, problem)  # type: ignore[index]
    if query.startswith("limit"):
        status, _, problem = await api.call("GET", "/audit?" + query)
        assert (status, problem["code"]) == (422, "invalid")  # type: ignore[index]


@pytest.mark.parametrize("bad", ["evil\n", "evil\r\n", "ev\nil", "\nevil", "evil "])
async def test_ids_with_a_newline_are_refused_everywhere(api: Admin, bad: str) -> None:
    """A customer id with a (trailing) newline is 422 on create and 404 in a path, never stored."""
    status, _, problem = await api.call(
        "POST", "/customers", {"id": bad, "name": "E", "plan": "free"}
    )
    assert (status, problem["code"]) == (422, "invalid")  # type: ignore[index]
    quoted = bad.replace("\n", "%0A").replace("\r", "%0D").replace(" ", "%20")
    status, headers, problem = await api.call("GET", f"/customers/{quoted}")
    assert (status, problem["code"]) == (404, "not_found")  # type: ignore[index]
    assert headers["Content-Type"].startswith("application/problem+json")
    status, _, problem = await api.call("GET", "/audit?target=" + quoted)
    assert (status, problem["code"]) == (422, "invalid")  # type: ignore[index]
    status, _, listed = await api.call("GET", "/customers")
    assert listed["items"] == []  # type: ignore[index]


async def test_lone_surrogates_are_422_not_500(api: Admin) -> None:
    r"""JSON's ``"\ud800"`` is no UTF-8 text: a name or metadata value with it is 422 invalid."""
    for body in (
        b'{"name": "\\ud800", "plan": "free"}',
        b'{"name": "A", "plan": "free", "metadata": {"k": "\\udfff"}}',
    ):
        status, ctype, problem = await _raw(api, "POST", "/customers", body)
        assert (status, problem["code"]) == (422, "invalid"), problem
        assert ctype.startswith("application/problem+json")


def test_check_id_is_a_full_match() -> None:
    """``check_id`` accepts the whole-string pattern only: no trailing newline, no suffix."""
    assert check_id("acme")
    assert check_id("a.b-c_9")
    for bad in ("evil\n", "evil\r", "", "-x", "a" * 129, "acme/x", "ac me"):
        assert not check_id(bad), repr(bad)


async def test_store_service_refuses_a_trailing_newline(tmp_path: Path) -> None:
    """The service behind the CLI and the admin API refuses an id with a trailing newline."""
    url = f"sqlite:///{tmp_path}/store.db"
    await migrate(url)
    backend = await open_store(url)
    try:
        svc = StoreService(backend, clock=lambda: 0.0, plans={"free"}, meters={"requests"})
        with pytest.raises(ServiceError) as info:
            await svc.create_customer(actor="t", name="E", plan="free", customer_id="evil\n")
        assert info.value.code == "invalid"
        assert await svc.list_customers(after=None, limit=10) == []
    finally:
        await backend.close()


async def test_unknown_method_keeps_allow_header(api: Admin) -> None:
    """405 stays problem+json and still tells the client which methods exist (``Allow``)."""
    async with api.session.delete(api.base + "/customers", headers=AUTH) as r:
        assert r.status == 405
        assert "GET" in r.headers["Allow"]
        assert r.headers["Content-Type"].startswith("application/problem+json")
