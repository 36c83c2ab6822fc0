"""Verified-token cache: bounded LRU keyed by the token's SHA-256, never past the token's exp."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cachetools import LRUCache

from tollhouse.authn.metrics import TOKEN_CACHE_HIT, TOKEN_CACHE_MISS
from tollhouse.authn.outcome import Principal

__all__ = ["TokenCache"]


class TokenCache:
    """``size`` 0 disables caching. Every hit re-checks ``exp`` against the injected clock."""

    __slots__ = ("_clock", "_entries", "size")

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self.size = size
        self._clock = clock
        self._entries: LRUCache[bytes, Principal] | None = LRUCache(size) if size > 0 else None

    @staticmethod
    def key(token: str) -> bytes:
        """Return the cache key of a token: its SHA-256, so raw tokens are never held here."""
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, key: bytes) -> Principal | None:
        """Return the cached principal, or None (miss, expired, or caching disabled)."""
        entries = self._entries
        if entries is None:
            return None
        principal = entries.get(key)
        if principal is None:
            TOKEN_CACHE_MISS.inc()
            return None
        exp = principal.expires_at
        if exp is None or self._clock() >= exp:
            entries.pop(key, None)
            TOKEN_CACHE_MISS.inc()
            return None
        TOKEN_CACHE_HIT.inc()
        return principal

    def put(self, key: bytes, principal: Principal) -> None:
        """Cache a verified principal until its ``expires_at`` (not cached when already past)."""
        exp = principal.expires_at
        if self._entries is None or exp is None or self._clock() >= exp:
            return
        self._entries[key] = principal

    def clear(self) -> None:
        """Forget everything (keys removed, config reloaded)."""
        if self._entries is not None:
            self._entries.clear()

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)
