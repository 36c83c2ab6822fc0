"""Store test support: the store tests' clock, fresh PostgreSQL databases, polling, services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import PostgresServer
from tests.support import Clock as _Clock
from tollhouse.store import StoreService, migrate, open_store

__all__ = ["T0", "Clock", "eventually", "fresh_pg_url", "make_service", "store_url"]

T0 = 1_764_000_000.0  # 2025-11-24T16:00:00Z


class Clock(_Clock):
    """The shared settable clock, starting at this module's T0 (the store tests' epoch)."""

    def __init__(self, now: float = T0) -> None:
        super().__init__(now)


def fresh_pg_url(server: PostgresServer) -> str:
    """Create an empty database on ``server``; return its URL."""
    return server.fresh_database_url("t_")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store URL of each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/store.db"
    return fresh_pg_url(request.getfixturevalue("postgres_server"))


async def eventually(pred: Callable[[], bool], within_s: float) -> bool:
    """Poll ``pred`` until it holds or ``within_s`` passes; return whether it held."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


async def make_service(url: str, clock: Clock) -> StoreService:
    """Migrate ``url`` and return a service on it."""
    await migrate(url)
    return StoreService(await open_store(url), clock=clock)
