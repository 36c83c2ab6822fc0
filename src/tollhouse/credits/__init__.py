"""Prepaid credits on the request path: prices, the per-grant counters, the balance book."""

from tollhouse.credits.book import CreditBook, Shortfall, Spend
from tollhouse.credits.counters import (
    CreditCounters,
    GrantCounter,
    MemoryCounters,
    RedisCounters,
    open_counters,
)
from tollhouse.credits.prices import CreditPrices, build_credit_prices

__all__ = [
    "CreditBook",
    "CreditCounters",
    "CreditPrices",
    "GrantCounter",
    "MemoryCounters",
    "RedisCounters",
    "Shortfall",
    "Spend",
    "build_credit_prices",
    "open_counters",
]
