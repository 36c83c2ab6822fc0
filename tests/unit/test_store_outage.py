"""Store outages: replicas keep serving their last snapshot, say so, and catch up afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.servers import PostgresServer, free_port
from tests.support.store import Clock, eventually, fresh_pg_url, make_service
from tollhouse.store import Directory, hash_key
from tollhouse.store.metrics import STORE_HEALTHY


class CutProxy:
    """A TCP proxy to PostgreSQL that a test can cut (drop every connection, refuse new ones)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in self._writers:
            w.close()
        self._writers.clear()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [cw, sw]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(cr, sw), pipe(sr, cw))


@pytest.fixture
def own_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test alone (it gets stopped)."""
    d = Path(tempfile.mkdtemp(prefix="th-pg-outage-"))
    os.chmod(d, 0o755)  # noqa: S103 - the postgres user must enter it (as in conftest)
    server = PostgresServer(d).start()
    yield server
    server.stop()


@pytest.fixture
async def proxy(postgres_server: PostgresServer) -> AsyncIterator[CutProxy]:
    """A cuttable proxy in front of the shared server."""
    p = CutProxy(postgres_server.port)
    await p.open()
    yield p
    await p.cut()


async def test_server_stop_keeps_snapshot_and_recovers(own_pg: PostgresServer) -> None:
    """With PostgreSQL stopped, the replica serves its snapshot, is unhealthy, then recovers."""
    url = fresh_pg_url(own_pg)
    clock = Clock()
    svc = await make_service(url, clock)
    await svc.create_customer(actor="cli", name="A", plan="free", customer_id="a")
    issued = await svc.issue_key("a", actor="cli")
    d = Directory(url, clock=clock, pg_check_interval_s=0.5)
    await d.start()
    try:
        own_pg.stop()
        assert await eventually(lambda: not d.healthy, 5.0)
        assert STORE_HEALTHY._value.get() == 0  # type: ignore[attr-defined]
        assert d.status_detail()["error"]
        assert d.ready
        assert d.api_key_customer(hash_key(issued.key)) == "a"
        assert d.customer("a") is not None
        await asyncio.to_thread(own_pg.start)
        assert await eventually(lambda: d.healthy, 10.0)
        await svc.revoke_key(issued.info.id, actor="cli")  # the writer reconnects too
        assert await eventually(lambda: d.api_key_customer(hash_key(issued.key)) is None, 1.0)
    finally:
        await d.stop()
        await svc.backend.close()


async def test_change_while_cut_off_arrives_after_reconnect(
    postgres_server: PostgresServer, proxy: CutProxy
) -> None:
    """A replica cut off from the store misses nothing: the change arrives once it reconnects."""
    url = fresh_pg_url(postgres_server)
    via_proxy = url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
    clock = Clock()
    svc = await make_service(url, clock)
    await svc.create_customer(actor="cli", name="A", plan="free", customer_id="a")
    d = Directory(via_proxy, clock=clock, pg_check_interval_s=0.5)
    await d.start()
    try:
        assert d.ready
        assert d.healthy
        await proxy.cut()
        assert await eventually(lambda: not d.healthy, 5.0)
        await svc.set_status("a", "suspended", actor="cli")
        issued = await svc.issue_key("a", actor="cli")
        await asyncio.sleep(0.3)  # a window for the change to leak through the cut: it must not
        assert d.customer("a").status == "active"  # type: ignore[union-attr]
        await proxy.open()
        assert await eventually(lambda: d.healthy, 10.0)
        assert await eventually(lambda: d.api_key_customer(hash_key(issued.key)) == "a", 1.0)
        assert d.customer("a").status == "suspended"  # type: ignore[union-attr]
    finally:
        await d.stop()
        await svc.backend.close()


async def test_not_ready_until_store_reachable(own_pg: PostgresServer) -> None:
    """A replica that starts while the store is down is not ready, and becomes ready later."""
    url = fresh_pg_url(own_pg)
    svc = await make_service(url, Clock())
    await svc.create_customer(actor="cli", name="A", plan="free", customer_id="a")
    await svc.backend.close()
    own_pg.stop()
    d = Directory(url, pg_check_interval_s=0.5)
    await d.start()
    try:
        assert not d.ready
        assert not d.healthy
        assert d.customer("a") is None
        await asyncio.to_thread(own_pg.start)
        assert await d.wait_ready(10.0)
        assert d.customer("a") is not None
    finally:
        await d.stop()
