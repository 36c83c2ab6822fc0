"""The limiter factory: the ``counters`` setting chooses the implementation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tollhouse.quota.limiter import Limiter

__all__ = ["open_limiter"]


def open_limiter(
    counters: str,
    *,
    clock: Callable[[], float],
    instance: str,
    lease_size: int = 1000,
    timeout_s: float = 0.05,
    counters_file: Path | None = None,
) -> Limiter:
    """``"memory"`` -> in-process limiter; ``"redis://..."`` -> Redis lease limiter.

    ``counters_file`` (memory only): where the counters survive restarts; None = not at all.
    """
    if counters == "memory":
        from tollhouse.quota.memory import MemoryLimiter

        return MemoryLimiter(clock=clock, path=counters_file, lease_size=lease_size)
    if counters.startswith("redis://"):
        from tollhouse.quota.redis_leases import RedisLeaseLimiter

        return RedisLeaseLimiter(
            counters, clock=clock, instance=instance, lease_size=lease_size, timeout_s=timeout_s
        )
    raise ValueError("counters must be 'memory' or redis://host:port/db")
