"""Key material generated at run time for tests, the demo and the benchmarks (never committed).

Also builds the hostile tokens the tests must see refused: ``alg: none`` and the HS256/RSA key
confusion attack (HMAC keyed with the issuer's public PEM), which PyJWT refuses to produce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = [
    "DevKey",
    "generate_ec",
    "generate_rsa",
    "hs256_token_with_public_key",
    "jwks",
    "make_token",
    "unsigned_token",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class DevKey:
    """A generated signing key with its ``kid`` and default algorithm."""

    kid: str
    alg: str
    private_key: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        """Return the public half as a JWK with ``kid``, ``alg`` and ``use: sig``."""
        pub = self.private_key.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def private_pem(self) -> bytes:
        """PKCS#8 PEM of the private key, unencrypted."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM of the public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def generate_rsa(kid: str, *, bits: int = 2048) -> DevKey:
    """Generate a fresh RSA key for RS256."""
    return DevKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=bits))


def generate_ec(kid: str) -> DevKey:
    """Generate a fresh P-256 key for ES256."""
    return DevKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def jwks(*keys: DevKey) -> dict[str, Any]:
    """Build a JWKS document holding the public halves of ``keys``."""
    return {"keys": [k.public_jwk() for k in keys]}


def make_token(
    key: DevKey,
    *,
    issuer: str,
    audience: str | list[str],
    subject: str,
    lifetime_s: float = 3600,
    now: float | None = None,
    alg: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Sign a JWT; a ``None`` value in ``extra_claims`` / ``headers`` removes that field."""
    t = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": int(t),
        "exp": int(t + lifetime_s),
    }
    claims.update(extra_claims or {})
    claims = {k: v for k, v in claims.items() if v is not None}
    hdr: dict[str, Any] = {"kid": key.kid, **(headers or {})}
    if hdr.get("kid") is None:
        hdr.pop("kid", None)
    hdr = {k: v for k, v in hdr.items() if v is not None}
    return jwt.encode(claims, key.private_key, algorithm=alg or key.alg, headers=hdr)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(obj: Mapping[str, Any]) -> str:
    return _b64(json.dumps(dict(obj), separators=(",", ":")).encode())


def unsigned_token(claims: Mapping[str, Any]) -> str:
    """Build a JWT with ``alg: none`` and an empty signature."""
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims)}."


def hs256_token_with_public_key(key: DevKey, claims: Mapping[str, Any]) -> str:
    """Forge the key-confusion attack: HS256 keyed with the public PEM, with the key's kid."""
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    sig = hmac.new(key.public_pem(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"
