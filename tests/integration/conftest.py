"""Module-scoped real stacks: one Envoy + one tollhouse per test module, not per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    Envoy,
    EnvoyPorts,
    LocalStack,
    Upstream,
    pick_ports,
    start_stack,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """JWKS server, echo upstream, `tollhouse serve` and Envoy, started once per module."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def envoy_without_tollhouse(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Envoy, Upstream]]:
    """Envoy and the upstream, with nothing listening where tollhouse should be."""
    ports = pick_ports()
    workdir: Path = tmp_path_factory.mktemp("envoy-alone")
    upstream = Upstream(ports.upstream).start()
    envoy = Envoy(workdir, EnvoyPorts(listen=ports.envoy, admin=ports.envoy_admin,
                                      tollhouse=ports.tollhouse, upstream=ports.upstream,
                                      usage=ports.usage))
    try:
        envoy.start()
        yield envoy, upstream
    finally:
        envoy.stop()
        upstream.stop()
