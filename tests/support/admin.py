"""Admin API test support: the token, a client, and the admin sub-app on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.servers import free_port
from tests.support.store import Clock
from tollhouse.admin import admin_routes, read_token_sha256
from tollhouse.store import StoreService, migrate, open_store

__all__ = ["TOKEN", "Admin", "admin", "start_admin"]

TOKEN = "adm-" + "s3cr3t-token-value-0123456789"


class Admin:
    """A running admin API and an HTTP client for it."""

    def __init__(self, base: str, session: aiohttp.ClientSession, url: str) -> None:
        self.base = base
        self.session = session
        self.store_url = url

    async def call(
        self, method: str, path: str, json: object = None, token: str | None = TOKEN
    ) -> tuple[int, dict[str, str], object]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.base + path, json=json, headers=headers) as r:
            body = await r.json(content_type=None)
            return r.status, dict(r.headers), body


async def start_admin(
    url: str, token_file: Path, catalog: bool = True
) -> tuple[web.AppRunner, str]:
    """Serve the admin sub-app at /admin on a free port; return the runner and base URL."""
    await migrate(url)
    svc = StoreService(
        await open_store(url),
        clock=Clock(),
        plans={"free", "pro"} if catalog else None,
        meters={"requests"} if catalog else None,
    )
    root = web.Application()
    root.add_subapp("/admin", admin_routes(svc, read_token_sha256(token_file)))
    runner = web.AppRunner(root)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/admin"


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    """The admin API on a SQLite store, with the token in a file."""
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    url = f"sqlite://{tmp_path}/store.db"
    runner, base = await start_admin(url, token_file)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield Admin(base, s, url)
    await runner.cleanup()
