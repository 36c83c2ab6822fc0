"""JWT verification through the Authenticator: every 401 case in isolation, and what passes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest

from tests.support import T0, Clock
from tollhouse.authn import Authenticator, AuthnFailure, Principal
from tollhouse.authn.jwks import parse_jwks
from tollhouse.authn.jwt import key_fits_alg
from tollhouse.config import AuthConfig, JwtIssuerConfig
from tollhouse.devkeys import (
    DevKey,
    generate_ec,
    generate_rsa,
    hs256_token_with_public_key,
    jwks,
    make_token,
    unsigned_token,
)

ISS = "https://issuer.test/"
AUD = "api://tollhouse"


@pytest.fixture(scope="module")
def rsa_key() -> DevKey:
    """Generate the issuer's RSA signing key."""
    return generate_rsa("rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> DevKey:
    """Generate the issuer's EC signing key."""
    return generate_ec("ec-1")


@pytest.fixture(scope="module")
def attacker() -> DevKey:
    """Generate a key the issuer never published, claiming the issuer's kid."""
    return generate_rsa("rsa-1")


@pytest.fixture
def clock() -> Clock:
    """Provide the injected clock."""
    return Clock()


@pytest.fixture
async def authn(
    tmp_path: Path, rsa_key: DevKey, ec_key: DevKey, clock: Clock
) -> AsyncIterator[Authenticator]:
    """Start an Authenticator for ISS with a JWKS file of rsa-1 and ec-1, cache off."""
    f = tmp_path / "jwks.json"
    f.write_text(json.dumps(jwks(rsa_key, ec_key)))
    issuer = JwtIssuerConfig(
        issuer=ISS, audiences=(AUD, "other-aud"), jwks_file=f, max_lifetime_s=7200
    )
    a = Authenticator(AuthConfig(jwt=(issuer,), token_cache_size=0), clock=clock)
    await a.start()
    yield a
    await a.stop()


def tok(key: DevKey, clock: Clock, **kw: Any) -> str:
    kw.setdefault("issuer", ISS)
    kw.setdefault("audience", AUD)
    kw.setdefault("subject", "cust-1")
    return make_token(key, now=clock.now, **kw)


def check(a: Authenticator, token: str) -> Principal | AuthnFailure:
    return a.authenticate({"authorization": f"Bearer {token}"})


def assert_401(result: Principal | AuthnFailure, detail: str) -> None:
    assert isinstance(result, AuthnFailure), result
    assert (result.status, result.code, result.bearer_error) == (
        401,
        "invalid_token",
        "invalid_token",
    )
    assert result.detail == detail


async def test_rs256_accepted(authn: Authenticator, rsa_key: DevKey, clock: Clock) -> None:
    """An RS256 token from the configured issuer yields its customer."""
    result = check(authn, tok(rsa_key, clock))
    assert result == Principal("cust-1", "jwt", ISS, None, T0 + 3600)


async def test_es256_accepted(authn: Authenticator, ec_key: DevKey, clock: Clock) -> None:
    """An ES256 token is accepted with the EC key."""
    result = check(authn, tok(ec_key, clock, subject="cust-ec"))
    assert isinstance(result, Principal)
    assert result.customer == "cust-ec"


async def test_audience_list_matches_any(
    authn: Authenticator, rsa_key: DevKey, clock: Clock
) -> None:
    """An aud list passes when any entry is an accepted audience."""
    result = check(authn, tok(rsa_key, clock, audience=["nope", "other-aud"]))
    assert isinstance(result, Principal)


async def test_missing_credentials(authn: Authenticator) -> None:
    """No credentials: 401 without bearer error parameters."""
    result = authn.authenticate({})
    assert result == AuthnFailure(401, "missing_credentials", "no credentials", None)
    assert authn.www_authenticate(result) == 'Bearer realm="tollhouse"'


@pytest.mark.parametrize(
    "token", ["", "not-a-jwt", "a.b.c", "e30.bm90IGpzb24.x", "x.y", "a.b.c.d.e"]
)
async def test_malformed(authn: Authenticator, token: str) -> None:
    """Anything that is not a compact JWS is a 401 'malformed token'."""
    assert_401(check(authn, token), "malformed token")


async def test_expired(authn: Authenticator, rsa_key: DevKey, clock: Clock) -> None:
    """A token past exp (beyond leeway) is refused."""
    token = tok(rsa_key, clock, lifetime_s=60)
    clock.now += 60 + 30
    assert_401(check(authn, token), "token expired")


@pytest.mark.parametrize(("late_s", "ok"), [(29, True), (30, False), (31, False)])
async def test_leeway_honoured(
    authn: Authenticator, rsa_key: DevKey, clock: Clock, late_s: int, ok: bool
) -> None:
    """The default 30 s leeway accepts a token until exp + 30 s."""
    token = tok(rsa_key, clock, lifetime_s=60)
    clock.now += 60 + late_s
    assert isinstance(check(authn, token), Principal) is ok


@pytest.mark.parametrize(("nbf_in_s", "ok"), [(10, True), (31, False), (600, False)])
async def test_nbf_in_future(
    authn: Authenticator, rsa_key: DevKey, clock: Clock, nbf_in_s: int, ok: bool
) -> None:
    """An nbf in the future beyond the leeway is refused."""
    result = check(authn, tok(rsa_key, clock, extra_claims={"nbf": int(clock.now) + nbf_in_s}))
    if ok:
        assert isinstance(result, Principal)
    else:
        assert_401(result, "token not yet valid")


async def test_iat_in_future(authn: Authenticator, rsa_key: DevKey, clock: Clock) -> None:
    """A token issued in the future (beyond leeway) is refused."""
    token = tok(rsa_key, clock, extra_claims={"iat": int(clock.now) + 300})
    assert_401(check(authn, token), "token issued in the future")


@pytest.mark.parametrize(
    "iss", ["https://evil.test/", "https://issuer.test", "HTTPS://ISSUER.TEST/"]
)
async def test_wrong_issuer(authn: Authenticator, rsa_key: DevKey, clock: Clock, iss: str) -> None:
    """The iss must match a configured issuer exactly."""
    assert_401(check(authn, tok(rsa_key, clock, issuer=iss)), "unknown issuer")


async def test_missing_issuer(authn: Authenticator, rsa_key: DevKey, clock: Clock) -> None:
    """A token without iss is refused."""
    token = tok(rsa_key, clock, extra_claims={"iss": None})
    assert_401(check(authn, token), "unknown issuer")


@pytest.mark.parametrize("aud", ["api://elsewhere", ["a", "b"], None])
async def test_wrong_audience(
    authn: Authenticator, rsa_key: DevKey, clock: Clock, aud: Any
) -> None:
    """A token for another audience, or with none, is refused."""
    token = tok(rsa_key, clock, extra_claims={"aud": aud})
    assert_401(check(authn, token), "wrong audience")


async def test_bad_signature(authn: Authenticator, attacker: DevKey, clock: Clock) -> None:
    """A token signed by an unpublished key under a published kid is refused."""
    assert_401(check(authn, tok(attacker, clock)), "signature verification failed")


async def test_tampered_payload(authn: Authenticator, rsa_key: DevKey, clock: Clock) -> None:
    """Swapping the payload of a valid token breaks its signature."""
    good = tok(rsa_key, clock).split(".")
    other = tok(rsa_key, clock, subject="someone-else").split(".")
    assert_401(check(authn, f"{good[0]}.{other[1]}.{good[2]}"), "signature verification failed")


async def test_alg_none(authn: Authenticator, clock: Clock) -> None:
    """An unsigned token (alg none) is refused."""
    claims = {"iss": ISS, "aud": AUD, "sub": "cust-1", "exp": int(clock.now) + 60}
    assert_401(check(authn, unsigned_token(claims)), "algorithm not allowed")


async def test_hs256_signed_with_rsa_public_key(
    authn: Authenticator, rsa_key: DevKey, clock: Clock
) -> None:
    """The key-confusion attack (HS256 keyed with the public PEM) is refused at every layer."""
    claims = {"iss": ISS, "aud": AUD, "sub": "cust-1", "exp": int(clock.now) + 60}
    forged = hs256_token_with_public_key(rsa_key, claims)
    assert_401(check(authn, forged), "algorithm not allowed")
    rsa_jwk = parse_jwks(json.dumps(jwks(rsa_key))).keys[0]
    assert not key_fits_alg(rsa_jwk, "HS256")
    with pytest.raises(pyjwt.InvalidKeyError):
        pyjwt.decode(forged, rsa_key.public_pem(), algorithms=["HS256"])


async def test_key_type_must_fit_alg(authn: Authenticator, ec_key: DevKey, clock: Clock) -> None:
    """An ES256 token naming the RSA key's kid is refused before any signature check."""
    token = tok(ec_key, clock, headers={"kid": "rsa-1"})
    assert_401(check(authn, token), "key does not fit the algorithm")


async def test_unknown_kid(authn: Authenticator, rsa_key: DevKey, clock: Clock) -> None:
    """A kid that is not in the issuer's key set is refused."""
    assert_401(check(authn, tok(rsa_key, clock, headers={"kid": "nobody"})), "unknown key id")


async def test_no_kid_with_several_keys(
    authn: Authenticator, rsa_key: DevKey, clock: Clock
) -> None:
    """A token without kid is refused when the issuer has more than one key."""
    token = tok(rsa_key, clock, headers={"kid": None})
    assert_401(check(authn, token), "token has no kid and the issuer has several keys")


@pytest.mark.parametrize("sub", [None, "", 42, ["cust"]])
async def test_missing_customer_claim(
    authn: Authenticator, rsa_key: DevKey, clock: Clock, sub: Any
) -> None:
    """The customer claim must be a non-empty string."""
    token = tok(rsa_key, clock, extra_claims={"sub": sub})
    assert_401(check(authn, token), "missing customer claim")


@pytest.mark.parametrize("exp", [None, "soon", True, 1e400])
async def test_missing_or_bad_exp(
    authn: Authenticator, rsa_key: DevKey, clock: Clock, exp: Any
) -> None:
    """A token without a numeric exp is refused."""
    token = tok(rsa_key, clock, extra_claims={"exp": exp})
    assert_401(check(authn, token), "missing or invalid exp")


async def test_lifetime_too_long(authn: Authenticator, rsa_key: DevKey, clock: Clock) -> None:
    """A lifetime (exp - iat) beyond max_lifetime_s is refused; exactly the maximum passes."""
    assert isinstance(check(authn, tok(rsa_key, clock, lifetime_s=7200)), Principal)
    too_long = tok(rsa_key, clock, lifetime_s=7201)
    assert_401(check(authn, too_long), "token lifetime exceeds the maximum")


async def test_lifetime_without_iat(authn: Authenticator, rsa_key: DevKey, clock: Clock) -> None:
    """Without iat, exp - now counts against max_lifetime_s."""
    ok = tok(rsa_key, clock, lifetime_s=7000, extra_claims={"iat": None})
    assert isinstance(check(authn, ok), Principal)
    far = tok(rsa_key, clock, lifetime_s=90 * 86400, extra_claims={"iat": None})
    assert_401(check(authn, far), "token lifetime exceeds the maximum")


def _header_pointing_at(field: str, attacker: DevKey) -> dict[str, Any]:
    values: dict[str, Any] = {
        "jku": "http://127.0.0.1:9/attacker-jwks.json",
        "x5u": "http://127.0.0.1:9/attacker.pem",
        "jwk": attacker.public_jwk(),
        "x5c": [attacker.public_pem().decode().splitlines()[1]],
    }
    return {field: values[field]}


@pytest.mark.parametrize("field", ["jku", "x5u", "jwk", "x5c"])
async def test_key_header_fields_ignored(
    authn: Authenticator, rsa_key: DevKey, attacker: DevKey, clock: Clock, field: str
) -> None:
    """Header fields jku / x5u / jwk / x5c never supply a key; a real token using them passes."""
    hdr = _header_pointing_at(field, attacker)
    assert_401(check(authn, tok(attacker, clock, headers=hdr)), "signature verification failed")
    own_kid = tok(attacker, clock, headers={**hdr, "kid": "attacker-kid"})
    assert_401(check(authn, own_kid), "unknown key id")
    assert isinstance(check(authn, tok(rsa_key, clock, headers=hdr)), Principal)


async def test_details_never_echo_the_token(
    authn: Authenticator, attacker: DevKey, clock: Clock
) -> None:
    """Failure details and WWW-Authenticate never contain the presented token."""
    token = tok(attacker, clock)
    result = check(authn, token)
    assert isinstance(result, AuthnFailure)
    challenge = authn.www_authenticate(result)
    assert token not in result.detail
    assert token.split(".")[2] not in challenge
    assert challenge == (
        'Bearer realm="tollhouse", error="invalid_token", '
        'error_description="signature verification failed"'
    )


async def test_weak_rsa_key_refused(tmp_path: Path, clock: Clock) -> None:
    """A published RSA key shorter than 2048 bits never verifies a token."""
    weak = generate_rsa("weak", bits=1024)
    f = tmp_path / "weak.json"
    f.write_text(json.dumps(jwks(weak)))
    a = Authenticator(
        AuthConfig(jwt=(JwtIssuerConfig(issuer=ISS, audiences=(AUD,), jwks_file=f),)), clock=clock
    )
    await a.start()
    try:
        with pytest.warns(pyjwt.InsecureKeyLengthWarning):
            token = tok(weak, clock)
        assert_401(check(a, token), "signing key refused")
    finally:
        await a.stop()
