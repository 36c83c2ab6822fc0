"""API keys: looked up by the SHA-256 (hex) of the presented key; keys themselves are never stored.

Config keys are the default source. A live entitlement store may be injected as ``lookup``
(sha256 hex -> customer or None); when both answer, the store wins.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from tollhouse.authn.outcome import AuthnFailure, Principal, invalid_api_key, keys_unavailable
from tollhouse.config import ApiKeysConfig
from tollhouse.keyhash import hash_api_key
from tollhouse.logs import get_logger

__all__ = ["ApiKeyVerifier", "hash_api_key"]

log = get_logger(__name__)

_UNKNOWN = invalid_api_key()
_STORE_DOWN = keys_unavailable("API key store unavailable")


class ApiKeyVerifier:
    """Resolve a presented API key to a customer."""

    __slots__ = ("_by_hash", "_lookup")

    def __init__(
        self, cfg: ApiKeysConfig, lookup: Callable[[str], str | None] | None = None
    ) -> None:
        self._by_hash = {k.sha256: (k.sha256, k.customer) for k in cfg.keys}
        self._lookup = lookup

    def verify(self, key: str) -> Principal | AuthnFailure:
        """Return the key's customer as a Principal; synchronous, never raises."""
        digest = hash_api_key(key)
        if self._lookup is not None:
            try:
                customer = self._lookup(digest)
            except Exception:
                log.error("api_keys.lookup_failed", exc=True)
                return _STORE_DOWN
            if customer:
                return Principal(customer=customer, kind="api_key")
        entry = self._by_hash.get(digest)
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return _UNKNOWN
        return Principal(customer=entry[1], kind="api_key")
