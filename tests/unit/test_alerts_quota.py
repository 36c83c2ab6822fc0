"""Quota alerts from the limiter's counters to the outbox: once per threshold and period."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.support import Clock
from tests.support.webhooks import FAST, running, until_delivered
from tests.webhook_receiver import Receiver
from tollhouse.alerts import QuotaAlerts, crossing
from tollhouse.config import AlertsConfig, ConfigError, parse_config
from tollhouse.quota.limiter import Limits
from tollhouse.quota.memory import MemoryLimiter
from tollhouse.store import migrate, open_store
from tollhouse.store.backend import Backend
from tollhouse.webhooks import Deliverer, DeliveryQueue, Outbox

RULES = AlertsConfig.model_validate(
    {"plans": {"pro": {"quota": [{"percent": 80}, {"percent": 100}]}}}
)


def test_usage_hovering_at_a_threshold_signals_once() -> None:
    """Usage going 79, 80, 79, 80, 81 ... signals reached once, and recovered only far below."""
    reached, signals = False, []
    for used in [70, 79, 80, 79, 80, 81, 79, 80, 77, 76, 80]:
        kind = crossing(used, 80, reached=reached, recover_below_percent=95)
        if kind is not None:
            signals.append((used, kind))
            reached = kind == "reached"
    assert signals == [(80, "reached"), (76, "recovered"), (80, "reached")]


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """A migrated SQLite store."""
    url = f"sqlite://{tmp_path}/store.db"
    await migrate(url)
    b = await open_store(url)
    yield b
    await b.close()


class World:
    """One customer on plan ``pro`` (quota of ``quota`` requests) and a memory limiter."""

    def __init__(self, quota: int) -> None:
        self.clock = Clock(time.time())  # the delivery loop runs on the real clock
        self.limiter = MemoryLimiter(clock=self.clock)
        self.quota = quota
        self.cust = SimpleNamespace(id="acme", plan="pro")

    def limits(self, *_: Any) -> Limits:
        return Limits(
            plan="pro",
            quotas={"requests": self.quota},
            per_second=None,
            per_minute=None,
            overage="deny",
            on_counter_error="fail_closed",
            anchor=None,
        )

    async def use(self, n: int) -> None:
        for _ in range(n):
            assert (
                await self.limiter.admit("acme", ["requests"], self.limits(), self.clock())
            ).allowed

    def alerts(self, outbox: Outbox) -> QuotaAlerts:
        return QuotaAlerts(
            RULES,
            limiter=self.limiter,
            resolve=lambda cid: (self.cust, object()) if cid == "acme" else None,
            limits_for=self.limits,
            emit=outbox.emit,
            clock=self.clock,
        )


async def _events(box: Outbox) -> list[tuple[str, str]]:
    out = []
    for d in reversed(await box.list_deliveries()):
        e = await box.get_event(d.event_id)
        payload = e.to_json()["payload"]
        out.append((e.type, f"{payload['data']['threshold']['percent']:g}"))
    return out


async def test_80_and_100_percent_fire_once_each_across_two_replicas(backend: Backend) -> None:
    """Two evaluators (replicas) on one store: 80% and 100% each fire exactly once.

    However often they evaluate; a top-up that drops usage below the hysteresis band recovers
    both, once.
    """
    world = World(quota=10)
    box = Outbox(backend, clock=world.clock)
    await box.create_endpoint(actor="t", url="https://hooks.test/", events=["*"])
    one, two = world.alerts(box), world.alerts(box)
    await world.use(7)
    assert await one.evaluate_once() == 0
    await world.use(1)
    assert await one.evaluate_once() == 1
    assert await two.evaluate_once() == 0
    await world.use(2)
    assert [await one.evaluate_once(), await two.evaluate_once(), await one.evaluate_once()] == [
        1,
        0,
        0,
    ]
    assert await _events(box) == [
        ("quota.threshold_reached", "80"),
        ("quota.threshold_reached", "100"),
    ]
    world.quota = 40  # a top-up: 10 used of 40 is 25%
    assert await one.evaluate_once() == 2
    assert await two.evaluate_once() == 0
    assert [t for t, _ in await _events(box)][2:] == ["quota.threshold_recovered"] * 2


async def test_alerts_arrive_signed_once_each_after_a_receiver_outage(backend: Backend) -> None:
    """80% and 100% crossed while the receiver fails: both arrive signed once it is back.

    One id each, however often the thresholds are evaluated; the retries reuse it.
    """
    world = World(quota=5)
    box = Outbox(backend, clock=world.clock)
    rx = Receiver(status=503)
    await rx.start()
    _, secret = await box.create_endpoint(actor="t", url=rx.url, events=["quota.threshold_reached"])
    alerts = world.alerts(box)
    d = Deliverer(
        DeliveryQueue(backend, clock=time.time),
        FAST,
        owner="r",
        clock=time.time,
        rng=random.Random(3),
    )
    try:
        async with running(d):
            await world.use(4)
            await alerts.evaluate_once()
            await world.use(1)
            await alerts.evaluate_once()
            for _ in range(5):  # hovering / re-evaluating adds nothing
                await alerts.evaluate_once()
            deadline = time.monotonic() + 10
            while len(set(rx.ids())) < 2:
                assert time.monotonic() < deadline
                await _pause()
            rx.status = 200
            await until_delivered(box)
    finally:
        await rx.stop()
    assert len(set(rx.ids())) == 2
    assert len(rx.seen) > 2  # the outage made them retry, under the same ids
    verified = {r.headers["webhook-id"]: Webhook(secret).verify(r.body, r.headers) for r in rx.seen}
    assert sorted(p["data"]["threshold"]["percent"] for p in verified.values()) == [80, 100]


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.05)


def test_alert_config_errors_name_the_field() -> None:
    """Unknown plans and meters, both or neither of percent/units, and no store are refused."""
    with pytest.raises(ConfigError) as e:
        parse_config(
            {
                "plans": {"pro": {}},
                "alerts": {
                    "plans": {
                        "gold": {"quota": [{"percent": 80}]},
                        "pro": {"quota": [{"meter": "bytes", "percent": 80}]},
                    }
                },
            }
        )
    assert sorted(p for p, _ in e.value.problems) == [
        "alerts",
        "alerts.plans.gold",
        "alerts.plans.pro.quota.0.meter",
    ]
    with pytest.raises(ConfigError) as e:
        parse_config({"alerts": {"default": {"quota": [{"percent": 80, "units": 3}]}}})
    assert [p for p, _ in e.value.problems] == ["alerts.default.quota.0"]


async def test_keys_of_a_finished_period_are_forgotten(backend: Backend) -> None:
    """The evaluator's memory of fired thresholds holds only current periods, not every past one."""
    world = World(quota=10)
    box = Outbox(backend, clock=world.clock)
    alerts = world.alerts(box)
    await world.use(8)
    assert await alerts.evaluate_once() == 1
    old = world.clock.now
    assert any(k.startswith("quota.threshold_reached:acme:requests:80") for k in alerts._reached)
    world.clock.now = old + 40 * 86_400  # the next calendar month: a new period, no usage yet
    assert await alerts.evaluate_once() == 0
    assert alerts._reached == set()
    await world.use(8)
    assert await alerts.evaluate_once() == 1  # the new period's 80% fires on its own key
    assert len(alerts._reached) == 1
