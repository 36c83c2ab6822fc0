"""Credit test support: grants, a store stand-in for flushes, a one-replica credit book."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from tests.support import T0, Clock
from tollhouse.credits import CreditBook, MemoryCounters
from tollhouse.store.credit_models import MILLI, CreditGrant

__all__ = ["DIME", "Store", "grant", "memory_book"]

DIME = 10 * MILLI  # 0.10 USD per request, in 1/1000 minor units


def grant(
    amount: int,
    *,
    priority: int = 10,
    eff: float = T0 - 60,
    exp: float | None = None,
    meters: Sequence[str] = (),
    gid: str = "",
) -> CreditGrant:
    """A grant of ``amount`` minor units to customer ``c``."""
    return CreditGrant(
        gid or "cg_" + secrets.token_hex(6),
        "c",
        amount,
        "USD",
        priority,
        eff,
        exp,
        frozenset(meters),
        frozenset(),
        "purchase",
        None,
        eff,
    )


class Store:
    """What the book flushes: grant id -> consumed (1/1000 minor units), like credit_consumed."""

    def __init__(self) -> None:
        self.consumed: dict[str, int] = {}

    async def add(self, deltas: Sequence[tuple[str, int]]) -> None:
        """Add the deltas."""
        for gid, units in deltas:
            self.consumed[gid] = self.consumed.get(gid, 0) + units


def memory_book(clock: Clock, store: Store) -> CreditBook:
    """A one-replica book seeded from ``store``."""
    return CreditBook(
        MemoryCounters(), clock=clock, seed=lambda g: store.consumed.get(g, 0), flush=store.add
    )
