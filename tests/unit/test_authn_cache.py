"""Verified-token cache: bounded, keyed by SHA-256, and never serving a token past its exp."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.support import T0, Clock
from tollhouse.authn import Authenticator, AuthnFailure, Principal
from tollhouse.authn.cache import TokenCache
from tollhouse.config import AuthConfig, JwtIssuerConfig
from tollhouse.devkeys import DevKey, generate_ec, jwks, make_token

ISS = "https://cache.test"


def _p(customer: str, exp: float | None) -> Principal:
    return Principal(customer, "jwt", ISS, None, exp)


def test_bounded() -> None:
    """The cache never holds more than its size; the least recently used goes first."""
    c = TokenCache(3, Clock())
    for i in range(10):
        c.put(c.key(f"t{i}"), _p(f"c{i}", T0 + 60))
        assert len(c) <= 3
    assert c.get(c.key("t0")) is None
    assert c.get(c.key("t9")) == _p("c9", T0 + 60)


def test_size_zero_disables() -> None:
    """token_cache_size 0 caches nothing."""
    c = TokenCache(0, Clock())
    c.put(c.key("t"), _p("c", T0 + 60))
    assert c.get(c.key("t")) is None
    assert len(c) == 0


def test_keyed_by_sha256_not_the_token() -> None:
    """Entries are keyed by the token's SHA-256 digest; the raw token is never a key."""
    c = TokenCache(10, Clock())
    assert c.key("abc.def.ghi") == hashlib.sha256(b"abc.def.ghi").digest()
    c.put(c.key("abc.def.ghi"), _p("c", T0 + 60))
    assert c._entries is not None
    assert list(c._entries.keys()) == [hashlib.sha256(b"abc.def.ghi").digest()]


def test_never_serves_past_exp() -> None:
    """A hit is checked against the injected clock: at exp the entry is gone."""
    clock = Clock()
    c = TokenCache(10, clock)
    c.put(c.key("t"), _p("c", T0 + 10))
    clock.now = T0 + 9.999
    assert c.get(c.key("t")) is not None
    clock.now = T0 + 10
    assert c.get(c.key("t")) is None
    clock.now = T0
    assert c.get(c.key("t")) is None  # evicted, not merely hidden


def test_expired_or_expless_not_stored() -> None:
    """A principal already past exp, or without exp, is not cached."""
    c = TokenCache(10, Clock())
    c.put(c.key("old"), _p("c", T0 - 1))
    c.put(c.key("none"), _p("c", None))
    assert len(c) == 0


@pytest.fixture(scope="module")
def key() -> DevKey:
    """Generate the issuer's EC key."""
    return generate_ec("ec-cache")


@pytest.fixture
async def authn(tmp_path: Path, key: DevKey) -> AsyncIterator[tuple[Authenticator, Clock]]:
    """Start an Authenticator with leeway 0 and the cache on."""
    f = tmp_path / "jwks.json"
    f.write_text(json.dumps(jwks(key)))
    clock = Clock()
    issuer = JwtIssuerConfig(issuer=ISS, audiences=("api",), jwks_file=f, leeway_s=0)
    a = Authenticator(AuthConfig(jwt=(issuer,), token_cache_size=100), clock=clock)
    await a.start()
    yield a, clock
    await a.stop()


def _hits() -> float:
    return REGISTRY.get_sample_value("tollhouse_token_cache_lookups_total", {"result": "hit"}) or 0


async def test_authenticator_serves_hits(authn: tuple[Authenticator, Clock], key: DevKey) -> None:
    """The second check of the same token is a cache hit with the same principal."""
    a, clock = authn
    h = {
        "authorization": "Bearer "
        + make_token(key, issuer=ISS, audience="api", subject="c1", now=clock.now)
    }
    before = _hits()
    first = a.authenticate(h)
    assert isinstance(first, Principal)
    assert a.authenticate(h) == first
    assert _hits() == before + 1


async def test_authenticator_never_serves_expired_token(
    authn: tuple[Authenticator, Clock], key: DevKey
) -> None:
    """A cached token is refused once the injected clock reaches its exp."""
    a, clock = authn
    token = make_token(key, issuer=ISS, audience="api", subject="c1", now=clock.now, lifetime_s=60)
    h = {"authorization": f"Bearer {token}"}
    assert isinstance(a.authenticate(h), Principal)
    clock.now += 59
    assert isinstance(a.authenticate(h), Principal)
    clock.now += 1
    result = a.authenticate(h)
    assert isinstance(result, AuthnFailure)
    assert result.detail == "token expired"


async def test_reconfigure_forgets_cached_verdicts(
    authn: tuple[Authenticator, Clock], key: DevKey
) -> None:
    """After a reload that drops the audience, a cached token is re-checked and refused."""
    a, clock = authn
    h = {
        "authorization": "Bearer "
        + make_token(key, issuer=ISS, audience="api", subject="c1", now=clock.now)
    }
    assert isinstance(a.authenticate(h), Principal)
    old = a.config.jwt[0]
    a.reconfigure(
        a.config.model_copy(update={"jwt": (old.model_copy(update={"audiences": ("other",)}),)})
    )
    result = a.authenticate(h)
    assert isinstance(result, AuthnFailure)
    assert result.detail == "wrong audience"
