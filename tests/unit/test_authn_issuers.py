"""Issuer selection, HS secrets, claim options, JWKS files and hot reload."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import jwt as pyjwt
import pytest
from prometheus_client import REGISTRY

from tests.support import T0, Clock
from tollhouse.authn import Authenticator, AuthnFailure, Principal
from tollhouse.config import AuthConfig, JwtIssuerConfig
from tollhouse.devkeys import DevKey, generate_ec, generate_rsa, jwks, make_token

A = "https://a.test"
B = "https://b.test"


@pytest.fixture(scope="module")
def rsa_key() -> DevKey:
    """Generate issuer A's RSA key."""
    return generate_rsa("a-1")


@pytest.fixture(scope="module")
def ec_key() -> DevKey:
    """Generate issuer B's EC key."""
    return generate_ec("b-1")


Start = Callable[[AuthConfig, Clock], Awaitable[Authenticator]]


@pytest.fixture
async def started() -> AsyncIterator[Start]:
    """Start Authenticators on demand and stop them at the end."""
    made: list[Authenticator] = []

    async def _start(auth: AuthConfig, clock: Clock) -> Authenticator:
        a = Authenticator(auth, clock=clock)
        made.append(a)
        await a.start()
        return a

    yield _start
    for a in made:
        await a.stop()


def write_jwks(path: Path, *keys: DevKey) -> Path:
    path.write_text(json.dumps(jwks(*keys)))
    return path


def check(a: Authenticator, token: str) -> Principal | AuthnFailure:
    return a.authenticate({"authorization": f"Bearer {token}"})


def hs_token(secret: str, clock: Clock, **extra: object) -> str:
    claims = {
        "iss": A,
        "aud": "api",
        "sub": "hs-cust",
        "iat": int(clock.now),
        "exp": int(clock.now) + 600,
        **extra,
    }
    return pyjwt.encode(claims, secret, algorithm="HS256", headers={"kid": "any"})


async def test_hs_secret_issuer(tmp_path: Path, started: Start, rsa_key: DevKey) -> None:
    """An HS256 issuer verifies with its secret file, whatever kid the token names."""
    secret = secrets.token_hex(32)
    (tmp_path / "hs.key").write_text(secret + "\n")
    clock = Clock()
    cfg = JwtIssuerConfig(
        issuer=A, audiences=("api",), hs_secret_file=tmp_path / "hs.key", algorithms=("HS256",)
    )
    a = await started(AuthConfig(jwt=(cfg,)), clock)
    assert a.ready
    assert check(a, hs_token(secret, clock)) == Principal("hs-cust", "jwt", A, None, T0 + 600)
    wrong = check(a, hs_token(secrets.token_hex(32), clock))
    assert isinstance(wrong, AuthnFailure)
    assert wrong.detail == "signature verification failed"
    rs = check(a, make_token(rsa_key, issuer=A, audience="api", subject="x", now=clock.now))
    assert isinstance(rs, AuthnFailure)
    assert rs.detail == "algorithm not allowed"


async def test_rotated_hs_secret_file_is_picked_up(tmp_path: Path, started: Start) -> None:
    """A rewritten hs_secret_file replaces the secret within a second.

    The old secret's token, already cached, is refused and the new secret's token verifies.
    """
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    (tmp_path / "hs.key").write_text(old + "\n")
    clock = Clock()
    cfg = JwtIssuerConfig(
        issuer=A, audiences=("api",), hs_secret_file=tmp_path / "hs.key", algorithms=("HS256",)
    )
    a = await started(AuthConfig(jwt=(cfg,)), clock)
    old_token = hs_token(old, clock)
    assert isinstance(check(a, old_token), Principal)
    (tmp_path / "hs.key").write_text(new + "\n")
    for _ in range(500):  # polled: the reload is due within a second, but CI machines are busy
        if isinstance(check(a, hs_token(new, clock)), Principal):
            break
        await asyncio.sleep(0.01)
    assert isinstance(check(a, hs_token(new, clock)), Principal)
    assert isinstance(check(a, old_token), AuthnFailure)


async def test_short_hs_secret_never_loads(tmp_path: Path, started: Start) -> None:
    """A secret shorter than 32 bytes is refused: not ready, tokens get 503."""
    (tmp_path / "hs.key").write_text("short-secret")
    clock = Clock()
    cfg = JwtIssuerConfig(
        issuer=A, audiences=("api",), hs_secret_file=tmp_path / "hs.key", algorithms=("HS256",)
    )
    a = await started(AuthConfig(jwt=(cfg,)), clock)
    assert not a.ready
    result = check(a, hs_token(secrets.token_hex(32), clock))
    assert isinstance(result, AuthnFailure)
    assert (result.status, result.code) == (503, "keys_unavailable")


async def test_iss_picks_the_issuer_keys(
    tmp_path: Path, started: Start, rsa_key: DevKey, ec_key: DevKey
) -> None:
    """Each issuer only trusts its own keys: A's key cannot sign for B."""
    clock = Clock()
    fa, fb = write_jwks(tmp_path / "a", rsa_key), write_jwks(tmp_path / "b", ec_key)
    auth = AuthConfig(
        jwt=(
            JwtIssuerConfig(issuer=A, audiences=("api",), jwks_file=fa),
            JwtIssuerConfig(issuer=B, audiences=("api",), jwks_file=fb),
        )
    )
    a = await started(auth, clock)
    for key, iss in ((rsa_key, A), (ec_key, B)):
        ok = check(a, make_token(key, issuer=iss, audience="api", subject="c", now=clock.now))
        assert isinstance(ok, Principal)
        assert ok.issuer == iss
    cross = check(a, make_token(rsa_key, issuer=B, audience="api", subject="c", now=clock.now))
    assert isinstance(cross, AuthnFailure)
    assert cross.detail == "unknown key id"


async def test_claim_options(tmp_path: Path, started: Start, ec_key: DevKey) -> None:
    """customer_claim and plan_claim read the configured claims; a one-key set needs no kid."""
    clock = Clock()
    f = write_jwks(tmp_path / "b", ec_key)
    cfg = JwtIssuerConfig(
        issuer=B, audiences=("api",), jwks_file=f, customer_claim="org_id", plan_claim="plan"
    )
    a = await started(AuthConfig(jwt=(cfg,)), clock)

    def token(**extra: object) -> str:
        return make_token(
            ec_key,
            issuer=B,
            audience="api",
            subject="user-7",
            now=clock.now,
            extra_claims=extra,
            headers={"kid": None},
        )

    assert check(a, token(org_id="org-1", plan="pro")) == Principal(
        "org-1", "jwt", B, "pro", T0 + 3600
    )
    plain = check(a, token(org_id="org-1", plan=["pro"]))
    assert isinstance(plain, Principal)
    assert plain.plan_hint is None
    missing = check(a, token())
    assert isinstance(missing, AuthnFailure)
    assert missing.detail == "missing customer claim"


async def test_jwks_file_reloaded_when_mtime_changes(
    tmp_path: Path, started: Start, rsa_key: DevKey, ec_key: DevKey
) -> None:
    """A rewritten JWKS file is picked up by the periodic refresh; unchanged files are skipped."""
    clock = Clock()
    f = write_jwks(tmp_path / "jwks.json", rsa_key)
    cfg = JwtIssuerConfig(issuer=A, audiences=("api",), jwks_file=f, jwks_refresh_s=0.05)
    a = await started(AuthConfig(jwt=(cfg,)), clock)
    unchanged = {"issuer": A, "result": "unchanged"}
    before = REGISTRY.get_sample_value("tollhouse_jwks_refreshes_total", unchanged) or 0
    for _ in range(500):  # polled: a refresh is due every 0.05 s, but CI machines are busy
        if (REGISTRY.get_sample_value("tollhouse_jwks_refreshes_total", unchanged) or 0) > before:
            break
        await asyncio.sleep(0.01)
    assert (REGISTRY.get_sample_value("tollhouse_jwks_refreshes_total", unchanged) or 0) > before
    write_jwks(f, rsa_key, ec_key)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    token = make_token(ec_key, issuer=A, audience="api", subject="c", now=clock.now)
    for _ in range(300):
        if isinstance(check(a, token), Principal):
            break
        await asyncio.sleep(0.01)
    assert isinstance(check(a, token), Principal)


async def test_reconfigure_keeps_unchanged_key_sets(
    tmp_path: Path, started: Start, rsa_key: DevKey, ec_key: DevKey
) -> None:
    """Reload keeps a key set whose source did not change, and starts / drops the others."""
    clock = Clock()
    fa, fb = write_jwks(tmp_path / "a", rsa_key), write_jwks(tmp_path / "b", ec_key)
    cfg_a = JwtIssuerConfig(issuer=A, audiences=("api",), jwks_file=fa)
    a = await started(AuthConfig(jwt=(cfg_a,)), clock)
    kept = a._keysets[A]
    cfg_a2 = cfg_a.model_copy(update={"audiences": ("api", "v2")})
    cfg_b = JwtIssuerConfig(issuer=B, audiences=("api",), jwks_file=fb)
    a.reconfigure(AuthConfig(jwt=(cfg_a2, cfg_b)))
    assert a._keysets[A] is kept
    assert isinstance(
        check(a, make_token(rsa_key, issuer=A, audience="v2", subject="c", now=clock.now)),
        Principal,
    )
    b_token = make_token(ec_key, issuer=B, audience="api", subject="c", now=clock.now)
    for _ in range(300):
        if a.ready:
            break
        await asyncio.sleep(0.01)
    assert isinstance(check(a, b_token), Principal)
    a.reconfigure(AuthConfig(jwt=(cfg_b,)))
    dropped = check(a, make_token(rsa_key, issuer=A, audience="api", subject="c", now=clock.now))
    assert isinstance(dropped, AuthnFailure)
    assert dropped.detail == "unknown issuer"
    for _ in range(300):  # polled: the dropped key set's refresh task stops on the loop
        if kept._periodic is None:
            break
        await asyncio.sleep(0.01)
    assert kept._periodic is None


async def test_no_issuers_is_ready() -> None:
    """With no issuer configured the authenticator is ready at once."""
    a = Authenticator(AuthConfig())
    await a.start()
    assert a.ready
    await a.stop()
