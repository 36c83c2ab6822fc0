"""Quotas per billing period and rate limits per customer (memory or Redis leases)."""

from tollhouse.periods import Period, period_for, period_for_key
from tollhouse.quota.factory import open_limiter
from tollhouse.quota.limiter import Admission, Limiter, Limits

__all__ = [
    "Admission",
    "Limiter",
    "Limits",
    "Period",
    "open_limiter",
    "period_for",
    "period_for_key",
]
