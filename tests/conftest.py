"""Session fixtures: real Redis and PostgreSQL servers, started once on free ports."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import PostgresServer, RedisServer
from tests.support.admin import admin  # noqa: F401 - a fixture for every test module
from tests.support.ledger import ledger_url  # noqa: F401 - a fixture for every test module
from tests.support.store import store_url  # noqa: F401 - a fixture for every test module


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; tests use distinct keys or FLUSHDB."""
    d = Path(tempfile.mkdtemp(prefix="th-redis-"))
    server = RedisServer(d).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session (run as the postgres user when root)."""
    d = Path(tempfile.mkdtemp(prefix="th-pg-"))
    os.chmod(d, 0o755)  # noqa: S103 - the postgres user must reach its data dir
    server = PostgresServer(d).start()
    yield server
    server.stop()
