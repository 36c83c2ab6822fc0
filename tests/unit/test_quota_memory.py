"""The embedded limiter: quotas per period, plan changes, overage, rate limits, headers."""

from __future__ import annotations

import uuid
from datetime import date

from prometheus_client import REGISTRY

from tests.support.quota_memory import NOW, lim, limits, run, ts


async def test_quota_of_q_admits_exactly_q() -> None:
    """A quota of 100 admits exactly 100 requests, then answers quota_exceeded until period end."""
    m = lim()
    out = await run(m, 150, limits(100))
    assert sum(a.allowed for a in out) == 100
    assert all(a.allowed for a in out[:100])
    denial = out[100]
    assert (denial.code, denial.limit) == ("quota_exceeded", "requests/period")
    assert denial.retry_after_s == int(ts(2026, 12, 1) - NOW)
    assert m.snapshot("c", limits(100), NOW) == {"requests": (100, 100)}


async def test_calendar_period_rolls_over_at_boundary() -> None:
    """A customer out of quota at 23:59:59 on Nov 30 is admitted again at 00:00 on Dec 1."""
    m = lim()
    end = ts(2026, 12, 1)
    assert sum(a.allowed for a in await run(m, 5, limits(3), end - 1)) == 3
    assert not (await m.admit("c", ["requests"], limits(3), end - 0.001)).allowed
    assert (await m.admit("c", ["requests"], limits(3), end)).allowed
    assert m.snapshot("c", limits(3), end) == {"requests": (1, 3)}


async def test_anniversary_jan31_anchor_rolls_over_on_feb_28() -> None:
    """With a Jan 31 anchor the quota resets on Feb 28 00:00 UTC, then on Mar 31."""
    m = lim()
    lm = limits(2, anchor=date(2026, 1, 31))
    assert sum(a.allowed for a in await run(m, 3, lm, ts(2026, 2, 27, 23, 59, 59))) == 2
    assert sum(a.allowed for a in await run(m, 3, lm, ts(2026, 2, 28))) == 2
    assert sum(a.allowed for a in await run(m, 3, lm, ts(2026, 3, 30, 23))) == 0
    assert sum(a.allowed for a in await run(m, 3, lm, ts(2026, 3, 31))) == 2


async def test_plan_change_mid_period_keeps_usage() -> None:
    """Upgrading keeps the units used and grants the new allowance at once; downgrading denies."""
    m = lim()
    assert sum(a.allowed for a in await run(m, 60, limits(100))) == 60
    pro = limits(200, plan="pro")
    assert sum(a.allowed for a in await run(m, 200, pro)) == 140
    assert m.snapshot("c", pro, NOW) == {"requests": (200, 200)}
    small = limits(50, plan="tiny")
    assert not (await m.admit("c", ["requests"], small, NOW)).allowed


async def test_overage_allow_admits_beyond_quota_flagged() -> None:
    """overage: allow admits past the quota with overage=True and keeps counting."""
    m = lim()
    out = await run(m, 8, limits(5, overage="allow"))
    assert all(a.allowed for a in out)
    assert [a.overage for a in out] == [False] * 5 + [True] * 3
    assert m.snapshot("c", limits(5), NOW) == {"requests": (8, 5)}


async def test_rate_limit_per_second_with_fake_clock() -> None:
    """5/s admits a burst of 5, refuses the 6th (retry 1 s), and refills over the next second."""
    m = lim()
    lm = limits(None, per_second=5)
    out = await run(m, 8, lm)
    assert [a.allowed for a in out] == [True] * 5 + [False] * 3
    assert (out[5].code, out[5].limit, out[5].retry_after_s) == ("rate_limited", "per_second", 1)
    half = await run(m, 4, lm, NOW + 0.5)
    assert [a.allowed for a in half] == [True, True, False, False]
    later = await run(m, 6, lm, NOW + 1.5)
    assert [a.allowed for a in later] == [True] * 5 + [False]


async def test_rate_limit_per_minute_and_denials_do_not_consume() -> None:
    """10/min: the 11th waits 6 s; refused requests take neither tokens nor quota."""
    m = lim()
    lm = limits(1000, per_minute=10)
    out = await run(m, 30, lm)
    assert sum(a.allowed for a in out) == 10
    assert (out[10].limit, out[10].retry_after_s) == ("per_minute", 6)
    assert m.snapshot("c", lm, NOW) == {"requests": (10, 1000)}
    assert (await m.admit("c", ["requests"], lm, NOW + 6)).allowed
    assert not (await m.admit("c", ["requests"], lm, NOW + 6)).allowed


async def test_quota_denial_consumes_no_rate_token() -> None:
    """A request refused by the quota leaves the rate-limit bucket untouched."""
    m = lim()
    lm = limits(1, per_second=2)
    out = await run(m, 3, lm)
    assert [a.code for a in out] == ["", "quota_exceeded", "quota_exceeded"]
    bigger = limits(5, per_second=2)
    assert (await m.admit("c", ["requests"], bigger, NOW)).allowed


async def test_headers_on_allowed_and_denied() -> None:
    """RateLimit-Policy and RateLimit carry every limit, on allowed and on denied answers."""
    m = lim()
    lm = limits(3, per_second=2, per_minute=100)
    reset = int(ts(2026, 12, 1) - NOW)
    first = await m.admit("c", ["requests"], lm, NOW)
    assert dict(first.headers) == {
        "ratelimit-policy": '"requests/period";q=3;w=2592000, "per_second";q=2;w=1, '
        '"per_minute";q=100;w=60',
        "ratelimit": f'"requests/period";r=2;t={reset}, "per_second";r=1;t=1, '
        '"per_minute";r=99;t=1',
    }
    await m.admit("c", ["requests"], lm, NOW)
    limited = await m.admit("c", ["requests"], lm, NOW)
    assert limited.code == "rate_limited"
    assert dict(limited.headers)["ratelimit"] == (
        f'"requests/period";r=1;t={reset}, "per_second";r=0;t=1, "per_minute";r=98;t=2'
    )
    await m.admit("c", ["requests"], lm, NOW + 1)
    out = await m.admit("c", ["requests"], lm, NOW + 2)
    assert out.code == "quota_exceeded"
    assert dict(out.headers)["ratelimit"].startswith(f'"requests/period";r=0;t={reset - 2}, ')


async def test_release_gives_units_back_once() -> None:
    """release() returns the reserved unit and rate token; a second release changes nothing."""
    m = lim()
    lm = limits(3, per_second=3)
    out = await run(m, 3, lm)
    assert not (await m.admit("c", ["requests"], lm, NOW)).allowed
    m.release(out[0])
    m.release(out[0])
    assert m.snapshot("c", lm, NOW) == {"requests": (2, 3)}
    assert (await m.admit("c", ["requests"], lm, NOW)).allowed
    assert not (await m.admit("c", ["requests"], lm, NOW)).allowed


async def test_post_hoc_meter_checked_at_admission() -> None:
    """A tokens quota filled by add_usage refuses the next request without consuming requests."""
    m = lim()
    lm = limits(None, quotas={"requests": 10, "tokens": 1000})
    meters = ["requests", "tokens"]
    assert (await m.admit("c", meters, lm, NOW)).allowed
    m.add_usage("c", "tokens", 1000, lm, NOW)
    out = await m.admit("c", meters, lm, NOW)
    assert (out.allowed, out.code, out.limit) == (False, "quota_exceeded", "tokens/period")
    assert 'qu="tokens"' in dict(out.headers)["ratelimit-policy"]
    assert m.snapshot("c", lm, NOW) == {"requests": (1, 10), "tokens": (1000, 1000)}


async def test_customers_are_independent() -> None:
    """One customer's usage never counts against another's quota."""
    m = lim()
    assert sum(a.allowed for a in await run(m, 5, limits(2), who="a")) == 2
    assert sum(a.allowed for a in await run(m, 5, limits(2), who="b")) == 2


async def test_metrics_count_denials_and_publish_plan_gauges() -> None:
    """Denials are counted by reason and limit; per-plan used/remaining gauges follow usage."""
    plan = f"plan-{uuid.uuid4().hex[:8]}"
    labels = {"reason": "quota_exceeded", "limit": "requests/period"}
    start = REGISTRY.get_sample_value("tollhouse_quota_denials_total", labels) or 0.0
    m = lim()
    lm = limits(3, plan=plan)
    await run(m, 5, lm, who="a")
    await run(m, 1, lm, who="b")
    assert REGISTRY.get_sample_value("tollhouse_quota_denials_total", labels) == start + 2
    await m.admit("b", ["requests"], lm, NOW + 6)  # gauges are refreshed at most every 5 s
    gauge = {"plan": plan, "meter": "requests"}
    assert REGISTRY.get_sample_value("tollhouse_quota_used_units", gauge) == 4
    assert REGISTRY.get_sample_value("tollhouse_quota_remaining_units", gauge) == 2
