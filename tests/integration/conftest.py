"""Module-scoped real stacks: one Envoy + one tollhouse per test module, not per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    TRANSPORTS,
    Envoy,
    EnvoyPorts,
    LocalStack,
    Upstream,
    pick_ports,
    start_stack,
)
from tollhouse.demo.stack import sidecar_http_config_path


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """How Envoy asks for the Check: a suite that takes this runs over gRPC and over HTTP."""
    return str(request.param)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[LocalStack]:
    """JWKS server, echo upstream, `tollhouse serve` and Envoy, started once per module."""
    s = start_stack(tmp_path_factory.mktemp(f"stack-{transport}"), transport=transport)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def envoy_without_tollhouse(
    tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[tuple[Envoy, Upstream]]:
    """Envoy and the upstream, with nothing listening where tollhouse should be."""
    ports = pick_ports()
    workdir: Path = tmp_path_factory.mktemp(f"envoy-alone-{transport}")
    upstream = Upstream(ports.upstream).start()
    template = sidecar_http_config_path().read_text() if transport == "http" else None
    envoy = Envoy(
        workdir,
        EnvoyPorts(
            listen=ports.envoy,
            admin=ports.envoy_admin,
            tollhouse=ports.tollhouse,
            upstream=ports.upstream,
            usage=ports.usage,
            authz_http=ports.authz_http,
        ),
        template,
    )
    try:
        envoy.start()
        yield envoy, upstream
    finally:
        envoy.stop()
        upstream.stop()
