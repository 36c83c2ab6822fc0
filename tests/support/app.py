"""App test support: a config for an in-process ``App``, and gRPC calls to it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.servers import free_port
from tollhouse.app import App

__all__ = ["ISS", "app_config", "check", "health", "wait_for"]

ISS = "https://issuer.example"


def app_config(tmp_path: Path, jwt: dict, plan: str = "free") -> dict:  # type: ignore[type-arg]
    """A config for ``App``: free ports, plans free and pro, inline metering under ``tmp_path``."""
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "auth": {"jwt": [{"issuer": ISS, "audiences": ["api"], **jwt}]},
        "features": {
            "search": [{"methods": ["GET"], "path": "/v1/search"}],
            "export": [{"methods": ["GET"], "path": "/v1/export"}],
        },
        "plans": {"free": {"features": ["search"]}, "pro": {"features": ["search", "export"]}},
        "customers": {"acme": {"plan": plan}},
        "metering": {
            "spool": str(tmp_path / "spool"),
            "process": "inline",
            "meter": f"sqlite:///{tmp_path}/meter.db",
        },
        "shutdown_grace_s": 2,
    }


async def health(app: App, service: str = "") -> int:
    """The gRPC health status of ``service`` on the app's listener."""
    async with grpc.aio.insecure_channel(app.cfg.listen) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(resp.status)


async def check(app: App, token: str, path: str) -> ea.CheckResponse:
    """One gRPC Check of ``GET path`` with a bearer token."""
    req = ea.CheckRequest()
    req.attributes.request.http.method = "GET"
    req.attributes.request.http.path = path
    req.attributes.request.http.headers["authorization"] = f"Bearer {token}"
    async with grpc.aio.insecure_channel(app.cfg.listen) as ch:
        return await ea_grpc.AuthorizationStub(ch).Check(req, timeout=2)


async def wait_for(predicate, timeout_s: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    """Await ``predicate()`` until it is true or ``timeout_s`` passes; whether it was."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False
