"""The usage-id digest of an invoice line: an order-independent sum kept per bucket at consume time.

``digest(ids) = "blake2b-sum64:" + 16 hex digits`` of ``sum(h(id) for id in ids) mod 2**64``, where
``h(id)`` is the BLAKE2b-64 hash of the id's UTF-8 bytes read as an unsigned big-endian integer.
Being a sum, it can be kept per ledger bucket (customer x meter x day x generation) as records
arrive and added up for any line, so invoicing never re-reads usage ids. The ledger stores each
bucket's sum as two 32-bit halves (``h_hi``, ``h_lo``), the carry folded in on every upsert.

It is a checksum of the set of ids behind a line (the same ids in any order give the same digest;
any id more, less or different changes it with probability ``1 - 2**-64``), not a signature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["LANE", "PREFIX", "digest", "from_lanes", "id_hash", "sql_id_hash"]

PREFIX = "blake2b-sum64:"
LANE = 1 << 32
_MASK = (1 << 64) - 1


def id_hash(usage_id: str) -> int:
    """Return ``h(usage_id)``: BLAKE2b-64 of the UTF-8 bytes, unsigned, big-endian."""
    return int.from_bytes(hashlib.blake2b(usage_id.encode(), digest_size=8).digest(), "big")


def sql_id_hash(usage_id: str) -> int:
    """``h(usage_id)`` as a signed 64-bit integer (SQLite's integer); the SQL splits it in lanes."""
    return int.from_bytes(
        hashlib.blake2b(usage_id.encode(), digest_size=8).digest(), "big", signed=True
    )


def from_lanes(hi: int, lo: int) -> str:
    """Return the digest of summed lanes (``sum(h >> 32)``, ``sum(h & 0xffffffff)``)."""
    return f"{PREFIX}{(hi * LANE + lo) & _MASK:016x}"


def digest(usage_ids: Iterable[str]) -> str:
    """Return the digest of ``usage_ids`` directly (the reference the ledger's lanes must match)."""
    return f"{PREFIX}{sum(id_hash(u) for u in usage_ids) & _MASK:016x}"
