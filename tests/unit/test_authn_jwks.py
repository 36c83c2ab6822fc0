"""JWKS from a real local aiohttp server: rotation, failures, cooldown, single-flight."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from tests.servers import free_port
from tests.support import Clock
from tollhouse.authn import Authenticator, AuthnFailure, Principal
from tollhouse.authn.jwks import JwksKeySet
from tollhouse.config import AuthConfig, JwtIssuerConfig
from tollhouse.devkeys import DevKey, generate_ec, jwks, make_token


class JwksServer:
    """A real HTTP server publishing a JWKS document that tests can change."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.status = 200
        self.delay_s = 0.0
        self.hits = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"
        self._runner: web.AppRunner | None = None

    def publish(self, *keys: DevKey) -> None:
        self.body = json.dumps(jwks(*keys)).encode()

    async def _handle(self, _request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(body=self.body, status=self.status, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="module")
def k1() -> DevKey:
    """Generate the first signing key."""
    return generate_ec("k1")


@pytest.fixture(scope="module")
def k2() -> DevKey:
    """Generate the rotated-in signing key."""
    return generate_ec("k2")


@pytest.fixture
async def server(k1: DevKey) -> AsyncIterator[JwksServer]:
    """Start a JWKS server publishing k1."""
    s = JwksServer()
    s.publish(k1)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def clock() -> Clock:
    """Provide the injected clock."""
    return Clock()


Make = Callable[..., Any]


@pytest.fixture
async def make(server: JwksServer, clock: Clock) -> AsyncIterator[Make]:
    """Build and start Authenticators for the server's URL; stop them afterwards."""
    made: list[Authenticator] = []

    async def _make(**issuer: Any) -> Authenticator:
        issuer.setdefault("jwks_cooldown_s", 0)
        cfg = JwtIssuerConfig(issuer=server.url, audiences=("api",), jwks_uri=server.url, **issuer)
        a = Authenticator(AuthConfig(jwt=(cfg,)), clock=clock)
        made.append(a)
        await a.start()
        return a

    yield _make
    for a in made:
        await a.stop()


def bearer(a: Authenticator, key: DevKey, clock: Clock) -> Principal | AuthnFailure:
    token = make_token(
        key, issuer=a.config.jwt[0].issuer, audience="api", subject="cust", now=clock.now
    )
    return a.authenticate({"authorization": f"Bearer {token}"})


async def eventually(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def keyset(a: Authenticator) -> JwksKeySet:
    return a._keysets[a.config.jwt[0].issuer]


def idle(ks: JwksKeySet) -> bool:
    task = ks._inflight
    return task is None or task.done()


def refreshes(issuer: str, result: str) -> float:
    labels = {"issuer": issuer, "result": result}
    return REGISTRY.get_sample_value("tollhouse_jwks_refreshes_total", labels) or 0


async def test_loaded_at_start(make: Make, server: JwksServer, k1: DevKey, clock: Clock) -> None:
    """start() fetches the URL once; the authenticator is ready and accepts k1."""
    a = await make()
    assert a.ready
    assert server.hits == 1
    assert isinstance(bearer(a, k1, clock), Principal)
    assert REGISTRY.get_sample_value("tollhouse_jwks_keys", {"issuer": server.url}) == 1


async def test_rotation_new_kid(
    make: Make, server: JwksServer, k1: DevKey, k2: DevKey, clock: Clock
) -> None:
    """A new kid is refused at once (no waiting), then accepted after the refresh it triggers."""
    a = await make()
    server.publish(k1, k2)
    first = bearer(a, k2, clock)
    assert isinstance(first, AuthnFailure)
    assert first.detail == "unknown key id"
    assert server.hits == 1  # answered before any fetch happened
    await eventually(lambda: isinstance(bearer(a, k2, clock), Principal))
    assert server.hits == 2


async def test_rotation_removed_kid(
    make: Make, server: JwksServer, k1: DevKey, k2: DevKey, clock: Clock
) -> None:
    """A kid removed from the JWKS is refused after refresh, even if its token was cached."""
    a = await make()
    assert isinstance(bearer(a, k1, clock), Principal)  # now cached
    server.publish(k2)
    await keyset(a).refresh()
    result = bearer(a, k1, clock)
    assert isinstance(result, AuthnFailure)
    assert result.detail == "unknown key id"
    assert isinstance(bearer(a, k2, clock), Principal)


@pytest.mark.parametrize(
    ("status", "body", "result"),
    [
        (500, None, "error"),
        (404, None, "error"),
        (200, b"<html>not json</html>", "invalid"),
        (200, b'{"keys": []}', "invalid"),
        (200, b'{"keys": [{"kty": "RSA"}, {"kty": "oct", "k": "c2VjcmV0"}]}', "invalid"),
        (200, b'["not", "a", "jwks"]', "invalid"),
    ],
)
async def test_failures_keep_last_good(
    make: Make,
    server: JwksServer,
    k1: DevKey,
    clock: Clock,
    status: int,
    body: bytes | None,
    result: str,
) -> None:
    """An HTTP error or a garbage document keeps the last good keys and is counted."""
    a = await make()
    before = refreshes(server.url, result)
    server.status = status
    if body is not None:
        server.body = body
    await keyset(a).refresh()
    assert server.hits == 2
    assert refreshes(server.url, result) == before + 1
    assert a.ready
    assert isinstance(bearer(a, k1, clock), Principal)


async def test_timeout_keeps_last_good(
    make: Make, server: JwksServer, k1: DevKey, clock: Clock
) -> None:
    """A fetch slower than jwks_timeout_s is abandoned; the last good keys stay."""
    a = await make(jwks_timeout_s=0.2)
    before = refreshes(server.url, "timeout")
    server.delay_s = 1.0
    await keyset(a).refresh()
    assert refreshes(server.url, "timeout") == before + 1
    assert isinstance(bearer(a, k1, clock), Principal)


async def test_bad_keys_skipped(
    make: Make, server: JwksServer, k1: DevKey, k2: DevKey, clock: Clock
) -> None:
    """Unusable entries in a set are skipped; the good keys load."""
    doc = jwks(k1, k2)
    doc["keys"][1]["x"] = "!!!"
    doc["keys"] += [
        {"kty": "EC"},
        "junk",
        {**k2.public_jwk(), "kid": "enc", "use": "enc"},
        {**k1.public_jwk(), "kid": "k1", "crv": "P-384"},
    ]
    server.body = json.dumps(doc).encode()
    a = await make()
    snap = keyset(a).snapshot
    assert snap is not None
    assert [k.kid for k in snap.keys] == ["k1"]
    assert isinstance(bearer(a, k1, clock), Principal)


async def test_cooldown_limits_refetches(
    make: Make, server: JwksServer, k2: DevKey, clock: Clock
) -> None:
    """Unknown kids cause at most one fetch per jwks_cooldown_s (by the injected clock)."""
    a = await make(jwks_cooldown_s=60)
    clock.now += 61  # the start-up fetch is outside the window
    for _ in range(20):
        assert isinstance(bearer(a, k2, clock), AuthnFailure)
        await asyncio.sleep(0.02)
    await eventually(lambda: idle(keyset(a)))
    assert server.hits == 2
    clock.now += 61
    bearer(a, k2, clock)
    await eventually(lambda: server.hits == 3)
    assert server.hits == 3


async def test_single_flight(make: Make, server: JwksServer, k2: DevKey, clock: Clock) -> None:
    """Many concurrent unknown-kid lookups and refresh calls cause one fetch."""
    a = await make(jwks_cooldown_s=0)
    server.delay_s = 0.5
    ks = keyset(a)
    results = [bearer(a, k2, clock) for _ in range(50)]
    await asyncio.gather(
        *(ks.refresh() for _ in range(20)),
        *(asyncio.to_thread(bearer, a, k2, clock) for _ in range(10)),
    )
    assert all(isinstance(r, AuthnFailure) for r in results)
    assert server.hits == 2


async def test_not_loaded_is_503_until_first_fetch(
    make: Make, server: JwksServer, k1: DevKey, clock: Clock
) -> None:
    """Before any key set loads, tokens get 503 keys_unavailable; then they pass."""
    server.status = 503
    a = await make()
    assert not a.ready
    result = bearer(a, k1, clock)
    assert result == AuthnFailure(503, "keys_unavailable", "signing keys not loaded yet", None)
    server.status = 200
    await eventually(lambda: a.ready)
    assert isinstance(bearer(a, k1, clock), Principal)


async def test_periodic_refresh(
    make: Make, server: JwksServer, k1: DevKey, k2: DevKey, clock: Clock
) -> None:
    """The key set is re-fetched every jwks_refresh_s without any request asking."""
    a = await make(jwks_refresh_s=0.05)
    server.publish(k2)
    await eventually(lambda: "k2" in getattr(keyset(a).snapshot, "by_kid", {}))
    assert server.hits >= 2
    assert isinstance(bearer(a, k2, clock), Principal)
