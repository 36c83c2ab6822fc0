"""Memory limiter test support: a fixed instant, limits, a limiter at that instant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tollhouse.quota import Limits, open_limiter
from tollhouse.quota.memory import MemoryLimiter

__all__ = ["NOW", "lim", "limits", "run", "ts"]


def ts(*args: int) -> float:
    """A UTC date-time as Unix seconds."""
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


NOW = ts(2026, 11, 25, 12)


def limits(q: int | None = 10, **kw: Any) -> Limits:
    """Plan ``free``: a quota of ``q`` requests (None: no quota), deny, fail closed."""
    base: dict[str, Any] = {
        "plan": "free",
        "quotas": {} if q is None else {"requests": q},
        "per_second": None,
        "per_minute": None,
        "overage": "deny",
        "on_counter_error": "fail_closed",
        "anchor": None,
    }
    base.update(kw)
    return Limits(**base)


def lim() -> MemoryLimiter:
    """A memory limiter whose clock stands at ``NOW``."""
    out = open_limiter("memory", clock=lambda: NOW, instance="t")
    assert isinstance(out, MemoryLimiter)
    return out


async def run(m: MemoryLimiter, n: int, lm: Limits, now: float = NOW, who: str = "c") -> list[Any]:
    """``n`` admissions of one request each; their answers."""
    return [await m.admit(who, ["requests"], lm, now) for _ in range(n)]
