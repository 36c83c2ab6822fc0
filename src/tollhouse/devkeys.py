"""Key material generated at run time for tests, the demo and the benchmarks (never committed).

Also builds the hostile tokens the tests must see refused: ``alg: none`` and the HS256/RSA key
confusion attack (HMAC keyed with the issuer's public PEM), which PyJWT refuses to produce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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
    "jwk_thumbprint",
    "jwks",
    "load_private_key",
    "make_token",
    "new_api_key",
    "unsigned_token",
    "write_private_key",
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


def generate_rsa(kid: str | None = None, *, bits: int = 2048) -> DevKey:
    """Generate a fresh RSA key for RS256 (``kid`` None: its JWK thumbprint)."""
    return _keyed(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=bits))


def generate_ec(kid: str | None = None) -> DevKey:
    """Generate a fresh P-256 key for ES256 (``kid`` None: its JWK thumbprint)."""
    return _keyed(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def _keyed(kid: str | None, alg: str, private_key: PrivateKey) -> DevKey:
    if kid is not None:
        return DevKey(kid, alg, private_key)
    return DevKey(jwk_thumbprint(DevKey("", alg, private_key).public_jwk()), alg, private_key)


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public RSA or EC JWK: a stable ``kid``."""
    members = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def load_private_key(path: Path, kid: str | None = None) -> DevKey:
    """Read a PEM private key (RSA: RS256, P-256: ES256); ``kid`` None: its JWK thumbprint.

    Raises ``ValueError`` naming the file when it holds no usable unencrypted private key.
    """
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return _keyed(kid, "RS256", key)
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return _keyed(kid, "ES256", key)
    raise ValueError(f"{path}: only RSA and P-256 keys are supported")


def write_private_key(key: DevKey, path: Path) -> None:
    """Write the PEM private key readable by its owner only (mode 0600), never over a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_pem())


def new_api_key() -> str:
    """A fresh random API key shaped like the store's (``th_`` + 32 random bytes, URL-safe)."""
    return "th_" + secrets.token_urlsafe(32)


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
