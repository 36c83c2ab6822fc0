"""Quotas per billing period and rate limits per customer (memory or Redis leases)."""

from tollhouse.quota.limiter import Admission, Limiter, Limits, open_limiter
from tollhouse.quota.windows import Period, period_for, period_for_key

__all__ = ["Admission", "Limiter", "Limits", "Period", "open_limiter", "period_for",
           "period_for_key"]
