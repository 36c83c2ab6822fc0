"""JWT verification: the token's ``iss`` picks the issuer, its ``kid`` picks the key.

Only the issuer's allow-listed algorithms, only keys whose own type fits the algorithm, never
``none``, never keys named by the token (jku, x5u, jwk, x5c). Claims are checked here against the
injected clock, not by PyJWT (which reads the wall clock): exp, nbf, iat, aud, lifetime, customer.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any, TypeGuard

import jwt as pyjwt

from tollhouse.authn.jwks import JwksKeySet, VerificationKey
from tollhouse.authn.outcome import AuthnFailure, Principal, invalid_token, keys_unavailable
from tollhouse.config import JwtIssuerConfig

__all__ = ["IssuerPolicy", "JwtVerifier", "key_fits_alg", "peek"]

# Signature only; every claim is checked below. Short keys (RSA < 2048, HMAC < hash size) fail.
_JWS = pyjwt.PyJWS(options={"verify_signature": True, "enforce_minimum_key_length": True})

_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

MALFORMED = invalid_token("malformed token")
UNKNOWN_ISSUER = invalid_token("unknown issuer")
UNKNOWN_KID = invalid_token("unknown key id")
BAD_ALG = invalid_token("algorithm not allowed")
BAD_SIGNATURE = invalid_token("signature verification failed")
KEY_MISMATCH = invalid_token("key does not fit the algorithm")
NO_KID = invalid_token("token has no kid and the issuer has several keys")
EXPIRED = invalid_token("token expired")
NOT_YET_VALID = invalid_token("token not yet valid")
ISSUED_IN_FUTURE = invalid_token("token issued in the future")
TOO_LONG = invalid_token("token lifetime exceeds the maximum")
WRONG_AUDIENCE = invalid_token("wrong audience")
NO_CUSTOMER = invalid_token("missing customer claim")
WEAK_KEY = invalid_token("signing key refused")
BAD_CUSTOMER = invalid_token("invalid customer claim")
_MAX_CUSTOMER = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # CR, LF, NUL...: refused by Envoy in a header


def key_fits_alg(key: VerificationKey, alg: str) -> bool:
    """Return True when the key's own type (and stated alg) matches the token's algorithm."""
    if key.alg is not None and key.alg != alg:
        return False
    if alg.startswith(("RS", "PS")):
        return key.kty == "RSA"
    if alg in _EC_CURVES:
        return key.kty == "EC" and key.crv == _EC_CURVES[alg]
    if alg == "EdDSA":
        return key.kty == "OKP"
    if alg.startswith("HS"):
        return key.kty == "oct" and isinstance(key.key, bytes)
    return False


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Decode header and payload WITHOUT verifying; None when the token is not a compact JWS."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header, payload = _b64json(parts[0]), _b64json(parts[1])
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None  # RecursionError: JSON nested deeper than the parser's stack (a 401)
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return None
    return header, payload


def _customer_ok(customer: str) -> bool:
    """At most 256 characters and no control character: it becomes a header value upstream."""
    return len(customer) <= _MAX_CUSTOMER and _CONTROL.search(customer) is None


def _num(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _audience_ok(aud: Any, allowed: tuple[str, ...]) -> bool:
    if isinstance(aud, str):
        return aud in allowed
    if isinstance(aud, list):
        return any(isinstance(a, str) and a in allowed for a in aud)
    return False


class IssuerPolicy:
    """One issuer's rules plus its key set."""

    __slots__ = ("algorithms", "cfg", "keys")

    def __init__(self, cfg: JwtIssuerConfig, keys: JwksKeySet) -> None:
        self.cfg = cfg
        self.keys = keys
        self.algorithms = frozenset(cfg.algorithms)

    def find_key(self, header: Mapping[str, Any]) -> VerificationKey | AuthnFailure:
        """Pick the key by kid (never by jku / x5u / jwk / x5c) and check it fits the alg."""
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            return BAD_ALG
        snap = self.keys.snapshot
        if snap is None:
            self.keys.request_refresh()
            return keys_unavailable("signing keys not loaded yet")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return MALFORMED
        key = snap.find(kid)
        if key is None:
            if kid is None:
                return NO_KID
            self.keys.request_refresh()
            return UNKNOWN_KID
        return key if key_fits_alg(key, alg) else KEY_MISMATCH

    def check_claims(self, claims: Mapping[str, Any], now: float) -> Principal | AuthnFailure:
        """Check time, audience, lifetime and customer claims of a verified token."""
        cfg = self.cfg
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not _num(exp):
            return invalid_token("missing or invalid exp")
        if now >= exp + cfg.leeway_s:
            return EXPIRED
        if nbf is not None and (not _num(nbf) or nbf > now + cfg.leeway_s):
            return NOT_YET_VALID
        if iat is not None and (not _num(iat) or iat > now + cfg.leeway_s):
            return ISSUED_IN_FUTURE
        lifetime = exp - iat if iat is not None else exp - now - cfg.leeway_s
        if lifetime > cfg.max_lifetime_s:
            return TOO_LONG
        if not _audience_ok(claims.get("aud"), cfg.audiences):
            return WRONG_AUDIENCE
        customer = claims.get(cfg.customer_claim)
        if not isinstance(customer, str) or not customer:
            return NO_CUSTOMER
        if not _customer_ok(customer):
            return BAD_CUSTOMER
        plan = claims.get(cfg.plan_claim) if cfg.plan_claim else None
        return Principal(
            customer=customer,
            kind="jwt",
            issuer=cfg.issuer,
            plan_hint=plan if isinstance(plan, str) and plan else None,
            expires_at=float(exp),
        )


class JwtVerifier:
    """Verify bearer tokens against the configured issuers."""

    __slots__ = ("issuers",)

    def __init__(self, issuers: Mapping[str, IssuerPolicy]) -> None:
        self.issuers = dict(issuers)

    def verify(self, token: str, now: float) -> Principal | AuthnFailure:
        """Verify signature and claims; synchronous, no I/O, never raises."""
        peeked = peek(token)
        if peeked is None:
            return MALFORMED
        header, claims = peeked
        iss = claims.get("iss")
        policy = self.issuers.get(iss) if isinstance(iss, str) else None
        if policy is None:
            return UNKNOWN_ISSUER
        key = policy.find_key(header)
        if isinstance(key, AuthnFailure):
            return key
        try:
            _JWS.decode_complete(token, key.key, algorithms=[header["alg"]])
        except pyjwt.InvalidSignatureError:
            return BAD_SIGNATURE
        except pyjwt.InvalidKeyError:
            return WEAK_KEY
        except (pyjwt.PyJWTError, ValueError, TypeError, RecursionError):
            return MALFORMED
        # The verified payload segment is the one peek() decoded (same split, same base64url).
        return policy.check_claims(claims, now)
