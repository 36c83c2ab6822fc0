"""The two outcomes of authentication: a :class:`Principal` or an :class:`AuthnFailure`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AuthnFailure",
    "Principal",
    "ambiguous",
    "invalid_api_key",
    "invalid_token",
    "keys_unavailable",
    "missing_credentials",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the customer id, how it was proven, and the token's expiry if any."""

    customer: str
    kind: Literal["jwt", "api_key"]
    issuer: str = ""
    plan_hint: str | None = None  # value of JwtIssuerConfig.plan_claim if configured
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class AuthnFailure:
    """Why a caller is refused. ``detail`` is safe for the client: never a token or key."""

    status: int  # 400 | 401 | 503
    code: str  # missing_credentials | invalid_token | invalid_api_key | ambiguous_credentials
    # | keys_unavailable
    detail: str
    bearer_error: str | None  # "invalid_token" / "invalid_request" / None (nothing was sent)


def invalid_token(detail: str) -> AuthnFailure:
    """Return a 401 for a bearer token that does not verify."""
    return AuthnFailure(401, "invalid_token", detail, "invalid_token")


def invalid_api_key(detail: str = "unknown API key") -> AuthnFailure:
    """Return a 401 for an API key that is not known."""
    return AuthnFailure(401, "invalid_api_key", detail, "invalid_token")


def missing_credentials(detail: str = "no credentials") -> AuthnFailure:
    """Return a 401 without error parameters (RFC 6750 3.1: nothing usable was sent)."""
    return AuthnFailure(401, "missing_credentials", detail, None)


def ambiguous(detail: str) -> AuthnFailure:
    """Return a 400: more than one credential was sent."""
    return AuthnFailure(400, "ambiguous_credentials", detail, "invalid_request")


def keys_unavailable(detail: str) -> AuthnFailure:
    """Return a 503: tollhouse cannot verify right now (keys not loaded, store failing)."""
    return AuthnFailure(503, "keys_unavailable", detail, None)
