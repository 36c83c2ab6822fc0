"""Credential extraction from CheckRequest headers, and how each outcome maps to a status."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollhouse.authn import Authenticator, AuthnFailure, extract_credentials
from tollhouse.authn.credentials import (
    AmbiguousCredentials,
    ApiKeyCredential,
    BearerCredential,
    NoCredentials,
)
from tollhouse.config import ApiKeysConfig, AuthConfig


def test_bearer_token() -> None:
    """Authorization: Bearer <token> yields the token, scheme case-insensitive."""
    assert extract_credentials({"authorization": "Bearer abc.def.ghi"}) == BearerCredential(
        "abc.def.ghi"
    )
    assert extract_credentials({"authorization": "bearer   abc"}) == BearerCredential("abc")
    assert extract_credentials({"authorization": "BEARER\tabc"}) == BearerCredential("abc")


def test_bearer_without_token_is_an_empty_token() -> None:
    """'Bearer' alone is a bearer credential with an empty (malformed) token."""
    assert extract_credentials({"authorization": "Bearer"}) == BearerCredential("")


def test_api_key_default_header() -> None:
    """The API key is read from x-api-key by default."""
    assert extract_credentials({"x-api-key": " k-123 "}) == ApiKeyCredential("k-123")


def test_api_key_configured_header() -> None:
    """A configured header name is used instead of x-api-key."""
    headers = {"x-tenant-key": "k-1", "x-api-key": "ignored"}
    assert extract_credentials(headers, "x-tenant-key") == ApiKeyCredential("k-1")


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": ""}, {"x-api-key": "  "}, {"cookie": "session=1"}]
)
def test_no_credentials(headers: dict[str, str]) -> None:
    """Absent or empty credential headers mean no credentials."""
    assert extract_credentials(headers) == NoCredentials()


def test_unsupported_scheme_alone() -> None:
    """A non-Bearer scheme alone counts as no usable credentials."""
    got = extract_credentials({"authorization": "Basic dXNlcjpwYXNz"})
    assert got == NoCredentials("unsupported authorization scheme")


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({"authorization": "Bearer a.b.c,Bearer d.e.f"}, "more than one Authorization header"),
        ({"authorization": "Basic x,Bearer a.b.c"}, "more than one Authorization header"),
        ({"x-api-key": "k1,k2"}, "more than one API key header"),
        (
            {"authorization": "Bearer a.b.c", "x-api-key": "k1"},
            "both an Authorization header and an API key were sent",
        ),
        (
            {"authorization": "Basic dXNlcjpwYXNz", "x-api-key": "k1"},
            "both an Authorization header and an API key were sent",
        ),
    ],
)
def test_ambiguous(headers: dict[str, str], detail: str) -> None:
    """Two Authorization headers, two keys, or a key with any Authorization are ambiguous."""
    assert extract_credentials(headers) == AmbiguousCredentials(detail)


def _authn(realm: str = "tollhouse") -> Authenticator:
    return Authenticator(AuthConfig(realm=realm, api_keys=ApiKeysConfig()))


def test_ambiguous_is_400_invalid_request() -> None:
    """An ambiguous request is a 400 with bearer error invalid_request."""
    a = _authn()
    result = a.authenticate({"authorization": "Bearer a.b.c", "x-api-key": "k"})
    assert result == AuthnFailure(
        400,
        "ambiguous_credentials",
        "both an Authorization header and an API key were sent",
        "invalid_request",
    )
    assert a.www_authenticate(result) == (
        'Bearer realm="tollhouse", error="invalid_request", '
        'error_description="both an Authorization header and an API key were sent"'
    )


def test_missing_is_401_without_error_params() -> None:
    """No credentials (or an unsupported scheme) is a 401 whose challenge has no error."""
    a = _authn()
    for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}):
        result = a.authenticate(headers)
        assert isinstance(result, AuthnFailure)
        assert (result.status, result.code, result.bearer_error) == (
            401,
            "missing_credentials",
            None,
        )
        assert a.www_authenticate(result) == 'Bearer realm="tollhouse"'


def test_realm_is_quoted() -> None:
    """The realm is quoted and escaped in the challenge."""
    a = _authn('my "api"')
    result = a.authenticate({})
    assert isinstance(result, AuthnFailure)
    assert a.www_authenticate(result) == 'Bearer realm="my \\"api\\""'


def test_bearer_with_no_issuers_is_401() -> None:
    """With no issuer configured, any bearer token is an unknown issuer."""
    result = _authn().authenticate({"authorization": "Bearer e30.eyJpc3MiOiJ4In0.c2ln"})
    assert result == AuthnFailure(401, "invalid_token", "unknown issuer", "invalid_token")


_header_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=200) | st.builds(
    lambda a, b, c: f"Bearer {a}.{b}.{c}",
    st.text(max_size=40),
    st.text(max_size=40),
    st.text(max_size=40),
)


@settings(max_examples=150, deadline=None)
@given(auth=_header_text, key=st.text(max_size=60))
def test_authenticate_never_raises(auth: str, key: str) -> None:
    """Arbitrary header values always give a value (a 400 / 401 here), never an exception."""
    a = Authenticator(AuthConfig())
    result = a.authenticate({"authorization": auth, "x-api-key": key})
    assert isinstance(result, AuthnFailure)
    assert result.status in (400, 401)
    assert a.www_authenticate(result).startswith('Bearer realm="tollhouse"')
