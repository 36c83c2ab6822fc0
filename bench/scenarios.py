"""The benchmark configurations (A, B, C0, C, C-miss, C-redis) and the stack each one runs.

A :class:`Stack` starts, on fresh free ports, what its :class:`Scenario` needs (Redis, tollhouse or
the bare ext_authz server, then Envoy with ``--concurrency 1 --base-id <unique>``) and stops it all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import BIN, BenchError, Proc, start_process, wait_http
from bench.render import AUDIENCE, ISSUER, PATH, EnvoyPorts, envoy_config, tollhouse_config
from tests.servers import RedisServer, free_port
from tollhouse.devkeys import DevKey, generate_rsa, jwks, make_token

__all__ = [
    "DEFAULT",
    "SCENARIOS",
    "Credentials",
    "Scenario",
    "Stack",
    "make_credentials",
    "running",
]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One configuration of the side-by-side table."""

    name: str
    description: str
    auth: str  # none | jwt_authn | ext_authz
    server: str | None = None  # None | bare | tollhouse
    token_cache_size: int = 100_000
    redis: bool = False
    quotas: bool = True
    spool: bool = True
    transport: str = "grpc"  # how Envoy asks for the Check: grpc | http

    @property
    def access_log(self) -> bool:
        """tollhouse with metering, and the bare floors, receive Envoy's gRPC access log."""
        return self.server is not None and self.spool


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("A", "Envoy alone (direct response)", "none"),
        Scenario("B", "Envoy jwt_authn (RS256, local JWKS)", "jwt_authn"),
        Scenario("C0", "ext_authz -> bare grpc.aio OK + counting ALS", "ext_authz", "bare"),
        Scenario("C", "ext_authz -> tollhouse, all features", "ext_authz", "tollhouse"),
        Scenario(
            "C0-http",
            "HTTP ext_authz -> bare asyncio 200 + counting ALS",
            "ext_authz",
            "bare",
            transport="http",
        ),
        Scenario(
            "C-http",
            "HTTP ext_authz -> tollhouse, all features (ALS over gRPC)",
            "ext_authz",
            "tollhouse",
            transport="http",
        ),
        Scenario(
            "C-miss", "C with the token cache off", "ext_authz", "tollhouse", token_cache_size=0
        ),
        Scenario("C-redis", "C with Redis counters + meter", "ext_authz", "tollhouse", redis=True),
        # Diagnostic, not in the default run: what metering (spool + access log) costs.
        Scenario(
            "C-nometer",
            "C without metering (no spool, no access log)",
            "ext_authz",
            "tollhouse",
            spool=False,
        ),
        Scenario(
            "C-http-nometer",
            "C-http without metering (no spool, no access log)",
            "ext_authz",
            "tollhouse",
            spool=False,
            transport="http",
        ),
    )
}
DEFAULT = ("A", "B", "C0", "C", "C0-http", "C-http", "C-miss", "C-redis", "C-nometer")


@dataclass(frozen=True)
class Credentials:
    """The run's key, its RS256 token for every configuration, and an API key."""

    key: DevKey
    token: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def jwks(self) -> dict[str, Any]:
        return jwks(self.key)


def make_credentials(lifetime_s: float = 6 * 3600) -> Credentials:
    """A fresh RSA key (generated now, never stored) and an RS256 token for customer ``acme``."""
    key = generate_rsa("bench-1")
    token = make_token(key, issuer=ISSUER, audience=AUDIENCE, subject="acme", lifetime_s=lifetime_s)
    return Credentials(key, token, secrets.token_urlsafe(24))


@dataclass
class Stack:
    """The running processes of one scenario."""

    scenario: Scenario
    workdir: Path
    envoy_ports: EnvoyPorts
    envoy: Proc | None = None
    server: Proc | None = None
    redis: RedisServer | None = None  # the counters (what ops_per_check counts)
    meter_redis: RedisServer | None = None  # the meter and the shared join, counted apart
    tollhouse_admin: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_ports.listen}{PATH}"


def _start_server(
    stack: Stack, creds: Credentials, uvloop: bool, overrides: tuple[str, ...]
) -> None:
    sc, wd = stack.scenario, stack.workdir
    port = stack.envoy_ports.authz
    http_port = stack.envoy_ports.authz_http or None
    listening = (port,) if http_port is None else (port, http_port)
    if sc.server == "bare":
        args = [sys.executable, "-m", "bench.bare_authz", "--port", str(port)]
        if http_port is not None:
            args += ["--http-port", str(http_port)]
        stack.server = start_process(
            "bare_authz", args + ["--uvloop"] * uvloop, _repo_dir(), listening
        )
        return
    if sc.redis:
        stack.redis = RedisServer(wd / "redis").start()
        stack.meter_redis = RedisServer(wd / "redis-meter").start()
    (wd / "jwks.json").write_text(json.dumps(creds.jwks()))
    cfg = tollhouse_config(
        grpc_port=port,
        http_port=http_port,
        admin_port=stack.tollhouse_admin,
        workdir=str(wd),
        api_key_sha256=hashlib.sha256(creds.api_key.encode()).hexdigest(),
        token_cache_size=sc.token_cache_size,
        quotas=sc.quotas,
        spool=sc.spool,
        redis_url=stack.redis.url if stack.redis is not None else None,
        meter_url=stack.meter_redis.url if stack.meter_redis is not None else None,
        overrides=overrides,
    )
    (wd / "tollhouse.yaml").write_text(cfg)
    args = [
        str(BIN / "tollhouse"),
        "serve",
        "--config",
        str(wd / "tollhouse.yaml"),
        "--log-level",
        "warning",
    ] + ["--uvloop"] * uvloop
    stack.server = start_process("tollhouse", args, wd, (*listening, stack.tollhouse_admin))
    wait_http(f"http://127.0.0.1:{stack.tollhouse_admin}/readyz", stack.server)


def _start_envoy(stack: Stack, creds: Credentials) -> None:
    sc, wd, ports = stack.scenario, stack.workdir, stack.envoy_ports
    text = envoy_config(
        ports, auth=sc.auth, jwks=creds.jwks(), access_log=sc.access_log, transport=sc.transport
    )
    path = wd / "envoy.yaml"
    path.write_text(text)
    # A port nothing listens on is a base id no other Envoy of this machine uses right now.
    args = [
        str(BIN / "envoy"),
        "-c",
        str(path),
        "--concurrency",
        "1",
        "--base-id",
        str(ports.admin),
        "--log-level",
        "warning",
    ]
    stack.envoy = start_process("envoy", args, wd, (ports.admin, ports.listen))
    wait_http(f"http://127.0.0.1:{ports.admin}/ready", stack.envoy)


def _distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    for _ in range(20 * n):
        port = free_port()
        if port not in ports:
            ports.append(port)
        if len(ports) == n:
            return ports
    raise BenchError("no distinct free ports")


def _repo_dir() -> Path:
    return Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running(
    sc: Scenario,
    creds: Credentials,
    root: Path,
    *,
    uvloop: bool = False,
    keep: bool = False,
    overrides: tuple[str, ...] = (),
) -> Iterator[Stack]:
    """Start the scenario's stack in ``root/<name>`` on fresh ports; stop it all on exit."""
    wd = root / sc.name
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    picked = _distinct_ports(5)
    http = sc.server is not None and sc.transport == "http"
    ports = EnvoyPorts(
        listen=picked[0],
        admin=picked[1],
        authz=picked[2] if sc.server else 0,
        authz_http=picked[4] if http else 0,
    )
    stack = Stack(sc, wd, ports, tollhouse_admin=picked[3])
    try:
        if sc.server:
            _start_server(stack, creds, uvloop, overrides)
        _start_envoy(stack, creds)
        yield stack
    finally:
        for proc in (stack.envoy, stack.server):
            if proc is not None:
                proc.stop()
        for server in (stack.redis, stack.meter_redis):
            if server is not None:
                server.stop()
        if not keep:
            shutil.rmtree(wd, ignore_errors=True)
