"""Session fixtures (real Redis and PostgreSQL on free ports) and the test tiers.

Tiers (one marker per test, see README "Development"): ``unit`` starts no server, ``component``
starts Redis, PostgreSQL or a gRPC server, ``e2e`` starts Envoy, ``deploy`` checks the k8s
manifests, the Dockerfile or the packaging. Modules that start something themselves say so with
``pytestmark``; an unmarked test in tests/unit or tests/reliability is ``component`` when it
takes a server fixture (or a fixture's PostgreSQL parameter), else ``unit``; a ``unit``
test that requests a server at run time fails.
"""

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


TIERS = ("unit", "component", "e2e", "deploy")
_SERVER_FIXTURES = frozenset({"redis_server", "postgres_server"})
_POSTGRES_PARAMS = frozenset({"postgres", "postgresql"})
_DERIVED_DIRS = (Path(__file__).parent / "unit", Path(__file__).parent / "reliability")


def _starts_a_server(item: pytest.Item) -> bool:
    """Whether a test takes a Redis/PostgreSQL fixture or a fixture's PostgreSQL parameter."""
    if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return any(isinstance(v, str) and v in _POSTGRES_PARAMS for v in params.values())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give an unmarked test in tests/unit or tests/reliability its tier: what it starts."""
    for item in items:
        if any(item.get_closest_marker(t) for t in TIERS):
            continue
        if not any(item.path.is_relative_to(d) for d in _DERIVED_DIRS):
            continue  # tests/integration marks every module itself
        item.add_marker("component" if _starts_a_server(item) else "unit")


@pytest.fixture(autouse=True)
def _unit_starts_no_server(request: pytest.FixtureRequest) -> Iterator[None]:
    """A ``unit`` test that took Redis or PostgreSQL (even via getfixturevalue) has a wrong tier."""
    yield
    started = _SERVER_FIXTURES & set(request.fixturenames)
    if started and request.node.get_closest_marker("unit") is not None:
        pytest.fail(f"marked unit but started {sorted(started)}: it is a component test")
