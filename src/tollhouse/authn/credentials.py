"""Which credentials a request carries, read from Envoy's CheckRequest headers.

Header names are lower-case. Envoy joins repeated headers with ``,``; neither a JWT nor an API key
contains a comma, so a comma in the value means the client sent the header twice: ambiguous.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "AmbiguousCredentials",
    "ApiKeyCredential",
    "BearerCredential",
    "Credentials",
    "NoCredentials",
    "extract_credentials",
]


@dataclass(frozen=True, slots=True)
class BearerCredential:
    """``Authorization: Bearer <token>``; ``token`` may be empty (a malformed token)."""

    token: str


@dataclass(frozen=True, slots=True)
class ApiKeyCredential:
    """An API key from the configured header."""

    key: str


@dataclass(frozen=True, slots=True)
class NoCredentials:
    """Nothing tollhouse understands was sent (absent, or an unsupported scheme alone)."""

    detail: str = "no credentials"


@dataclass(frozen=True, slots=True)
class AmbiguousCredentials:
    """More than one credential: a 400, tollhouse never guesses which one counts."""

    detail: str


Credentials = BearerCredential | ApiKeyCredential | NoCredentials | AmbiguousCredentials

_NONE = NoCredentials()
_UNSUPPORTED = NoCredentials("unsupported authorization scheme")
_TWO_AUTH = AmbiguousCredentials("more than one Authorization header")
_TWO_KEYS = AmbiguousCredentials("more than one API key header")
_BOTH = AmbiguousCredentials("both an Authorization header and an API key were sent")


def extract_credentials(
    headers: Mapping[str, str], api_key_header: str = "x-api-key"
) -> Credentials:
    """Classify the credentials of one request; never raises."""
    auth = headers.get("authorization", "").strip()
    key = headers.get(api_key_header, "").strip()
    if auth and "," in auth:
        return _TWO_AUTH
    if key and "," in key:
        return _TWO_KEYS
    if auth and key:
        return _BOTH
    if key:
        return ApiKeyCredential(key)
    if not auth:
        return _NONE
    parts = auth.split(None, 1)
    if parts[0].lower() != "bearer":
        return _UNSUPPORTED
    return BearerCredential(parts[1].strip() if len(parts) == 2 else "")
