"""Real processes for the Envoy integration tests, on ports from ``tests/servers.free_port``.

The process management is ``tollhouse.demo`` (one copy, shared with ``make demo``):

- :class:`Envoy`: the shipped ``envoy/sidecar.yaml`` rendered with the test's ports, run with
  ``--concurrency 1 --base-id <unique>``; ready on admin ``/ready``; ``stats()`` reads ``/stats``.
- :class:`Upstream`: an echo API in a thread; ``seen`` holds what Envoy forwarded.
- :class:`Tollhouse`: ``tollhouse serve --config FILE``; ready on ``/readyz``; ``stop()`` (SIGTERM,
  returns the exit code), ``kill()`` (SIGKILL), ``rewrite_config()`` (hot reload).
- :class:`JwksServer`: the issuer's JWKS URL; ``set_document()`` rotates keys.
- :class:`LocalStack`: all four, wired together, with the demo catalog (alice free, bob pro,
  globex enterprise with an API key).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tests.servers import free_port
from tollhouse.demo.httpd import EchoUpstream, HttpResponse, JwksServer, http_request
from tollhouse.demo.localstack import AUDIENCE, ISSUER, LocalStack, StackPorts
from tollhouse.demo.stack import EnvoyPorts, EnvoyProcess, StackError, TollhouseProcess

__all__ = [
    "AUDIENCE",
    "ISSUER",
    "Envoy",
    "EnvoyPorts",
    "HttpResponse",
    "JwksServer",
    "LocalStack",
    "StackError",
    "Tollhouse",
    "Upstream",
    "http_request",
    "pick_ports",
    "start_stack",
    "upstream_saw",
    "wait_until",
]

Envoy = EnvoyProcess
Tollhouse = TollhouseProcess
Upstream = EchoUpstream

T = TypeVar("T")


def pick_ports() -> StackPorts:
    """Seven distinct free ports for one stack."""
    return StackPorts.pick(free_port)


def start_stack(workdir: Path, *, jwks_refresh_s: float = 1.0, jwks_cooldown_s: float = 0.5,
                overrides: Mapping[str, Any] | None = None) -> LocalStack:
    """JWKS + upstream + tollhouse + Envoy on free ports; fast JWKS refresh for rotation tests.

    ``overrides`` replaces top-level sections of the demo config (e.g. ``{"metering": ...}``).
    """
    stack = LocalStack(workdir, pick_ports(), jwks_refresh_s=jwks_refresh_s,
                       jwks_cooldown_s=jwks_cooldown_s, overrides=overrides)
    return stack.start()


def wait_until(probe: Callable[[], T], accept: Callable[[T], bool], *, timeout_s: float = 10.0,
               interval_s: float = 0.1, what: str = "condition") -> T:
    """Call ``probe`` until ``accept`` says yes; fail with the last value after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s; last: {value!r}")
        time.sleep(interval_s)


def upstream_saw(upstream: EchoUpstream, marker: str) -> list[dict[str, object]]:
    """Return the requests the upstream received whose path contains ``marker``."""
    return [r for r in list(upstream.seen) if marker in str(r["path"])]
