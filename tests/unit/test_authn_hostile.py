"""Hostile bearer tokens through the real Checker: each is a 401, never a 503 or an OK.

The Checker, the Authenticator and a JWKS file are real; only the request is crafted.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from tests.support.check import ISS, get_request, make_checker
from tollhouse import devkeys
from tollhouse.decision import Allow, Deny


def _seg(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.fixture
def key() -> devkeys.DevKey:
    """The issuer's signing key."""
    return devkeys.generate_ec("k1")


@pytest.mark.parametrize("where", ["header", "payload", "list"])
async def test_token_nested_20000_levels_is_401(
    tmp_path: Path, key: devkeys.DevKey, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An unsigned token whose header or payload nests 20,000 levels is 401 invalid_token.

    It used to blow the JSON parser's stack inside authentication and come out as 503
    ``keys_unavailable`` with an ``authn.internal_error`` log line.
    """
    caplog.set_level(logging.DEBUG, logger="tollhouse")
    c = await make_checker(tmp_path, key)
    normal = _seg(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    deep = _seg(_nested(20000)) if where != "list" else _seg(b"[" * 20000 + b"]" * 20000)
    token = f"{deep}.{normal}." if where == "header" else f"{normal}.{deep}."
    d = await c.check(get_request("/v1/search", token))
    assert isinstance(d, Deny)
    assert (d.status, d.code) == (401, "invalid_token")
    assert 'error="invalid_token"' in dict(d.headers)["www-authenticate"]
    assert "authn.internal_error" not in caplog.text


@pytest.mark.parametrize("sub", ["acme\n", "acme\r\nx-evil: 1", "ac\x00me", "a" * 257])
async def test_customer_claim_unfit_for_a_header_is_401(
    tmp_path: Path, key: devkeys.DevKey, sub: str
) -> None:
    """A signed token whose customer has a control character or 257+ characters is a 401.

    Even with ``default_plan`` set: no OK whose identity header Envoy would refuse.
    """
    c = await make_checker(tmp_path, key, extra={"default_plan": "free"})
    token = devkeys.make_token(key, issuer=ISS, audience="api", subject=sub)
    d = await c.check(get_request("/v1/search", token))
    assert isinstance(d, Deny)
    assert (d.status, d.code) == (401, "invalid_token")
    ok = await c.check(
        get_request(
            "/v1/search",
            devkeys.make_token(key, issuer=ISS, audience="api", subject="client-1@clients"),
        )
    )
    assert isinstance(ok, Allow)
    assert ok.customer == "client-1@clients"
