"""The one hash of an API key: what config files, the store and the Check compare.

A leaf module (hashlib only), so the store, the Check path and the tools share it without
importing each other.
"""

from __future__ import annotations

import hashlib

__all__ = ["hash_api_key"]


def hash_api_key(key: str) -> str:
    """Return the lower-case SHA-256 hex of ``key`` (UTF-8)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
