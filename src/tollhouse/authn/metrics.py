"""Prometheus metrics of the authentication package (default registry, ``tollhouse_`` prefix)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "JWKS_KEYS",
    "JWKS_REFRESHES",
    "TOKEN_CACHE",
    "TOKEN_CACHE_HIT",
    "TOKEN_CACHE_MISS",
]

JWKS_REFRESHES = Counter(
    "tollhouse_jwks_refreshes",
    "JWKS loads by issuer and result (ok, unchanged, error, timeout, invalid).",
    ["issuer", "result"],
)

JWKS_KEYS = Gauge(
    "tollhouse_jwks_keys",
    "Verification keys currently loaded, per issuer.",
    ["issuer"],
)

TOKEN_CACHE = Counter(
    "tollhouse_token_cache_lookups",
    "Verified-token cache lookups by result (hit, miss).",
    ["result"],
)

# Bound children: the hot path does not pay for a label lookup.
TOKEN_CACHE_HIT = TOKEN_CACHE.labels("hit")
TOKEN_CACHE_MISS = TOKEN_CACHE.labels("miss")
