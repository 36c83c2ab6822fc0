"""API keys: hashed lookup in config and an injected store; the store wins when both answer."""

from __future__ import annotations

import hashlib

import pytest

from tollhouse.authn import Authenticator, AuthnFailure, Principal, hash_api_key
from tollhouse.authn.api_keys import ApiKeyVerifier
from tollhouse.config import ApiKeyEntry, ApiKeysConfig, AuthConfig

KEY_A = "tk_live_alpha_0123456789"
KEY_B = "tk_live_bravo_9876543210"


def _cfg(header: str = "x-api-key") -> AuthConfig:
    keys = (
        ApiKeyEntry(sha256=hash_api_key(KEY_A), customer="acme"),
        ApiKeyEntry(sha256=hash_api_key(KEY_B).upper(), customer="bravo"),
    )
    return AuthConfig(api_keys=ApiKeysConfig(header=header, keys=keys))


def test_hash_api_key_is_sha256_hex() -> None:
    """hash_api_key returns the lower-case SHA-256 hex of the UTF-8 key."""
    assert hash_api_key("k") == hashlib.sha256(b"k").hexdigest()
    assert hash_api_key("clé") == hashlib.sha256("clé".encode()).hexdigest()


def test_config_key_accepted() -> None:
    """A configured key yields its customer as an api_key principal."""
    a = Authenticator(_cfg())
    assert a.authenticate({"x-api-key": KEY_A}) == Principal("acme", "api_key")


def test_upper_case_hash_in_config_matches() -> None:
    """A hash written in upper case in config still matches."""
    a = Authenticator(_cfg())
    assert a.authenticate({"x-api-key": KEY_B}) == Principal("bravo", "api_key")


@pytest.mark.parametrize(
    "key", ["tk_live_unknown", KEY_A + "x", KEY_A.upper(), hash_api_key(KEY_A)]
)
def test_unknown_key_rejected(key: str) -> None:
    """An unknown key, a near miss, or the stored hash itself is a 401 invalid_api_key."""
    result = Authenticator(_cfg()).authenticate({"x-api-key": key})
    assert result == AuthnFailure(401, "invalid_api_key", "unknown API key", "invalid_token")
    assert key not in result.detail


def test_configured_header_only() -> None:
    """With a custom header, the key is read there and x-api-key is not consulted."""
    a = Authenticator(_cfg("x-tenant-key"))
    assert a.authenticate({"x-tenant-key": KEY_A}) == Principal("acme", "api_key")
    missing = a.authenticate({"x-api-key": KEY_A})
    assert isinstance(missing, AuthnFailure)
    assert missing.code == "missing_credentials"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": f"{KEY_A},{KEY_B}"},
        {"x-api-key": KEY_A, "authorization": "Bearer a.b.c"},
        {"x-api-key": KEY_A, "authorization": "Basic dXNlcjpwYXNz"},
    ],
)
def test_ambiguous_key_requests(headers: dict[str, str]) -> None:
    """Two keys, or a key with an Authorization header, is a 400."""
    result = Authenticator(_cfg()).authenticate(headers)
    assert isinstance(result, AuthnFailure)
    assert (result.status, result.code) == (400, "ambiguous_credentials")


def test_store_lookup_gets_the_hash_and_wins() -> None:
    """The injected lookup receives the sha256 hex and its answer beats config."""
    seen: list[str] = []

    def lookup(digest: str) -> str | None:
        seen.append(digest)
        return "acme-from-store" if digest == hash_api_key(KEY_A) else None

    a = Authenticator(_cfg(), key_lookup=lookup)
    assert a.authenticate({"x-api-key": KEY_A}) == Principal("acme-from-store", "api_key")
    assert seen == [hash_api_key(KEY_A)]


def test_config_answers_when_store_does_not() -> None:
    """A key the store does not know falls back to config."""
    a = Authenticator(_cfg(), key_lookup=lambda _d: None)
    assert a.authenticate({"x-api-key": KEY_B}) == Principal("bravo", "api_key")


def test_store_only_key() -> None:
    """A key only the store knows is accepted."""
    v = ApiKeyVerifier(ApiKeysConfig(), lambda d: "new" if d == hash_api_key("fresh") else None)
    assert v.verify("fresh") == Principal("new", "api_key")
    assert isinstance(v.verify("stale"), AuthnFailure)


def test_store_failure_is_503() -> None:
    """A store that raises gives 503 keys_unavailable, never an allow or a crash."""

    def broken(_digest: str) -> str | None:
        raise RuntimeError("store down")

    result = Authenticator(_cfg(), key_lookup=broken).authenticate({"x-api-key": KEY_A})
    assert result == AuthnFailure(503, "keys_unavailable", "API key store unavailable", None)
