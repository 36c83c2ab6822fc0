"""The credit book: prepaid spend from grants in order, exact, bounded across replicas by Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from tests.servers import RedisServer, free_port
from tests.support import T0, Clock
from tests.support.credits import DIME, Store, grant, memory_book
from tollhouse.credits import CreditBook, RedisCounters, Shortfall, Spend
from tollhouse.store.credit_models import MILLI, CreditGrant


async def spend_until_refused(
    book: CreditBook,
    grants: Sequence[CreditGrant],
    now: float,
    cost: int = DIME,
    meter: str = "requests",
) -> tuple[int, Shortfall]:
    """Spend ``cost`` per request until refused: (requests admitted, the refusal)."""
    n = 0
    while True:
        got = await book.spend("c", grants, {meter: cost}, "api", now)
        if isinstance(got, Shortfall):
            return n, got
        n += 1
        assert n <= 10_000


async def test_one_dollar_at_ten_cents_admits_exactly_ten() -> None:
    """1.00 of credit at 0.10 a request: exactly 10 admitted, then exhausted with balance 0."""
    clock, store = Clock(), Store()
    book, g = memory_book(clock, store), grant(100)
    n, why = await spend_until_refused(book, [g], clock.now)
    assert (n, why.reason, why.balance) == (10, "exhausted", 0)
    await book.flush()
    assert store.consumed == {g.id: 100 * MILLI}


async def test_fractional_prices_are_exact_to_a_thousandth_of_a_minor_unit() -> None:
    """0.0015 USD (0.15 cent = 150 milli) a request: 1.00 pays 666 requests, 0.10 cent is left."""
    clock, store = Clock(), Store()
    book, g = memory_book(clock, store), grant(100)
    n, why = await spend_until_refused(book, [g], clock.now, cost=150)
    assert (n, why.balance) == (666, 100 * MILLI - 666 * 150)
    await book.flush()
    assert store.consumed[g.id] == 666 * 150


async def test_an_expired_or_future_grant_is_never_used() -> None:
    """A grant past its expiry or before its effective time pays for nothing."""
    clock, store = Clock(), Store()
    book = memory_book(clock, store)
    expired, future = grant(100, exp=T0), grant(100, eff=T0 + 1)
    n, why = await spend_until_refused(book, [expired, future], clock.now)
    assert (n, why.balance) == (0, 0)
    assert store.consumed == {}


async def test_grants_are_consumed_in_priority_order_and_scope_is_respected() -> None:
    """Priority 1 pays before priority 5; a grant scoped to tokens never pays for requests."""
    clock, store = Clock(), Store()
    book = memory_book(clock, store)
    first, second = grant(20, priority=1), grant(30, priority=5)
    tokens_only = grant(1000, priority=0, meters=["tokens"])
    n, _ = await spend_until_refused(book, [tokens_only, first, second], clock.now)
    assert n == 5
    await book.flush()
    assert store.consumed == {first.id: 20 * MILLI, second.id: 30 * MILLI}


async def test_released_spend_is_given_back_and_never_flushed() -> None:
    """A request refused after spending (spool failure) gets its credit back."""
    clock, store = Clock(), Store()
    book, g = memory_book(clock, store), grant(100)
    got = await book.spend("c", [g], {"requests": DIME}, "api", clock.now)
    assert isinstance(got, Spend)
    book.release(got)
    book.release(got)  # twice is once
    await book.flush()
    assert book.balance([g], clock.now) == 100 * MILLI
    assert store.consumed.get(g.id, 0) == 0


async def test_a_restart_resumes_from_the_flushed_consumption() -> None:
    """A new book seeded from the store starts where the flushed spend left the balance."""
    clock, store = Clock(), Store()
    g = grant(100)
    book = memory_book(clock, store)
    for _ in range(4):
        assert isinstance(await book.spend("c", [g], {"requests": DIME}, "api", clock.now), Spend)
    await book.stop()
    n, _ = await spend_until_refused(memory_book(clock, store), [g], clock.now)
    assert n == 6


async def test_post_response_cost_is_charged_and_may_go_past_the_balance_as_a_debt() -> None:
    """Tokens priced after the response are charged; beyond the balance they count as spent."""
    clock, store = Clock(), Store()
    book, g = memory_book(clock, store), grant(100)
    got = await book.spend("c", [g], {"requests": 0, "tokens": 0}, "api", clock.now)
    assert isinstance(got, Spend)
    assert got.taken == ()
    book.charge([g], "tokens", "api", 120 * MILLI, clock.now)
    await book.flush()
    assert store.consumed[g.id] == 120 * MILLI
    assert book.balance([g], clock.now) == 0
    n, _ = await spend_until_refused(book, [g], clock.now, cost=0, meter="tokens")
    assert n == 0


def redis_book(url: str, name: str, store: Store, lease_minor: int = 30) -> CreditBook:
    """A book whose grant totals are shared through Redis (real time: Redis TIME decides)."""
    counters = RedisCounters(url, clock=time.time, instance=name, timeout_s=0.5)
    return CreditBook(
        counters,
        clock=time.time,
        seed=lambda g: store.consumed.get(g, 0),
        flush=store.add,
        lease_milli=lease_minor * MILLI,
        timeout_s=0.5,
        idle_return_s=0.0,
        recheck_s=0.0,
    )


async def test_two_replicas_sharing_redis_never_spend_more_than_the_grant(
    redis_server: RedisServer,
) -> None:
    """Two replicas spending one grant in turn admit at most its amount, and all of it at last."""
    store, now = Store(), time.time()
    g = grant(100, eff=now - 60)
    a, b = redis_book(redis_server.url, "a", store), redis_book(redis_server.url, "b", store)
    admitted = 0
    for _ in range(3):  # leases left idle in one replica come back on its flush
        for book in (a, b, a, b):
            for _ in range(3):
                admitted += isinstance(
                    await book.spend("c", [g], {"requests": DIME}, "api", time.time()), Spend
                )
        await a.flush()
        await b.flush()
        assert admitted <= 10
    assert admitted == 10
    await a.stop()
    await b.stop()
    assert store.consumed[g.id] == 100 * MILLI


async def test_concurrent_spend_on_two_replicas_stays_within_the_grant(
    redis_server: RedisServer,
) -> None:
    """Many concurrent requests on two replicas: request-time spend never passes the grant."""
    store, now = Store(), time.time()
    g = grant(1000, eff=now - 60)
    a, b = (
        redis_book(redis_server.url, "a", store, 100),
        redis_book(redis_server.url, "b", store, 100),
    )

    async def one(book: CreditBook) -> bool:
        return isinstance(await book.spend("c", [g], {"requests": DIME}, "api", time.time()), Spend)

    results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(300)))
    await a.stop()
    await b.stop()
    assert 0 < sum(results) <= 100
    assert store.consumed[g.id] == sum(results) * DIME


async def test_unreachable_counters_are_a_shortfall_of_kind_unavailable() -> None:
    """With Redis down the book cannot decide: 'unavailable' (the Check answers 503), not 402."""
    store = Store()
    book = redis_book(f"redis://127.0.0.1:{free_port()}/0", "x", store)
    got = await book.spend(
        "c", [grant(100, eff=time.time() - 60)], {"requests": DIME}, "api", time.time()
    )
    assert isinstance(got, Shortfall)
    assert got.reason == "unavailable"
    await book.stop()


def test_prices_are_exact_in_thousandths_of_the_currencys_minor_unit() -> None:
    """0.10 USD is 10 000; 3 JPY is 3 000; 0.0015 USD a token is 150 a token, rounded up once."""
    from tollhouse.config import parse_config
    from tollhouse.credits import build_credit_prices

    cfg = parse_config(
        {
            "store": {"url": "sqlite:///tmp/s.db"},
            "meters": {"tokens": {"from_response_header": "x-tokens"}},
            "plans": {
                "usd": {
                    "prepaid": True,
                    "price": {
                        "meters": {
                            "requests": {"unit_price": "0.10"},
                            "tokens": {"unit_price": "0.000015"},
                        }
                    },
                },
                "jpy": {
                    "prepaid": True,
                    "on_credit_exhausted": "allow",
                    "price": {"currency": "JPY", "meters": {"requests": {"unit_price": "3"}}},
                },
                "postpaid": {"price": {"meters": {"requests": {"unit_price": "1"}}}},
            },
        }
    )
    prices = build_credit_prices(cfg)
    assert sorted(prices) == ["jpy", "usd"]
    usd, jpy = prices["usd"], prices["jpy"]
    assert usd.admission_costs(["requests", "tokens"]) == {"requests": DIME, "tokens": 0}
    assert usd.cost("tokens", 1) == 2  # 1.5 rounded up
    assert usd.cost("tokens", 1000) == 1500
    assert (jpy.cost("requests", 1), jpy.deny_when_exhausted, usd.deny_when_exhausted) == (
        3 * MILLI,
        False,
        True,
    )


async def test_a_burst_on_one_replica_spends_the_whole_grant_and_no_more(
    redis_server: RedisServer,
) -> None:
    """300 concurrent requests on one replica: exactly the 100 the grant pays for are admitted.

    Requests that find their lease spent by others lease again instead of being refused early.
    """
    store = Store()
    g = grant(1000, eff=time.time() - 60)
    book = redis_book(redis_server.url, "solo", store, 100)

    async def one() -> bool:
        return isinstance(await book.spend("c", [g], {"requests": DIME}, "api", time.time()), Spend)

    results = await asyncio.gather(*(one() for _ in range(300)))
    await book.stop()
    assert sum(results) == 100
    assert store.consumed[g.id] == 100 * DIME
