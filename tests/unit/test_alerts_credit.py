"""Credit alerts from the credit book to the outbox: once per threshold and grant epoch."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import Clock
from tests.support.credits import DIME, Store, grant, memory_book
from tollhouse.alerts import CreditAlerts
from tollhouse.config import AlertsConfig
from tollhouse.credits import CreditBook, Spend
from tollhouse.store import migrate, open_store
from tollhouse.store.backend import Backend
from tollhouse.store.credit_models import CreditGrant
from tollhouse.webhooks import Outbox

RULES = AlertsConfig.model_validate({"plans": {"prepaid": {"credit": [{"percent": 20}]}}})


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Outbox]:
    """An outbox on a migrated SQLite store, with one endpoint for every event."""
    url = f"sqlite://{tmp_path}/store.db"
    await migrate(url)
    b: Backend = await open_store(url)
    outbox = Outbox(b, clock=time.time)
    await outbox.create_endpoint(actor="t", url="https://hooks.test/", events=["*"])
    yield outbox
    await b.close()


class Directory:
    """The customer ``c`` on plan ``prepaid`` with the grants and recharge rule given."""

    def __init__(self, grants: list[CreditGrant], recharge: tuple[int, int] | None) -> None:
        self.grants, self.recharge = grants, recharge

    def customer(self, cid: str) -> Any:
        return (
            SimpleNamespace(
                plan="prepaid", credit_grants=tuple(self.grants), recharge=self.recharge
            )
            if cid == "c"
            else None
        )


async def spend(book: CreditBook, d: Directory, clock: Clock, n: int) -> None:
    """Spend 0.10 ``n`` times."""
    for _ in range(n):
        assert isinstance(
            await book.spend("c", d.grants, {"requests": DIME}, "api", clock.now), Spend
        )


async def events(box: Outbox) -> list[tuple[str, int]]:
    """(type, balance) of every recorded event, oldest first."""
    out = []
    for d in reversed(await box.list_deliveries()):
        payload = (await box.get_event(d.event_id)).to_json()["payload"]
        out.append((payload["type"], payload["data"]["balance"]))
    return out


async def test_low_recharge_and_exhausted_fire_once_each_across_two_replicas(box: Outbox) -> None:
    """Spending 1.00 down: recharge below 0.30, low below 20%, exhausted at 0, each once.

    Two evaluators (replicas) evaluating every step record each event a single time.
    """
    clock = Clock()
    book, d = memory_book(clock, Store()), Directory([grant(100)], (30, 100))
    one, two = (
        CreditAlerts(RULES, book=book, directory=d, emit=box.emit, clock=clock) for _ in range(2)
    )
    for n in (7, 1, 1, 1):
        await spend(book, d, clock, n)
        for _ in range(3):
            await one.evaluate_once()
            await two.evaluate_once()
    assert await events(box) == [
        ("credit.recharge_requested", 20),
        ("credit.low", 10),
        ("credit.exhausted", 0),
    ]
    recharge = (await box.get_event((await box.list_deliveries())[-1].event_id)).to_json()
    assert recharge["payload"]["data"]["amount"] == 80  # up to the target of 1.00


async def test_a_new_grant_re_arms_the_alerts(box: Outbox) -> None:
    """After a top-up grant, running low again fires again (a new epoch in the dedupe key)."""
    clock = Clock()
    book, d = memory_book(clock, Store()), Directory([grant(100)], None)
    alerts = CreditAlerts(RULES, book=book, directory=d, emit=box.emit, clock=clock)
    await spend(book, d, clock, 10)
    assert await alerts.evaluate_once() == 2  # low and exhausted
    assert await alerts.evaluate_once() == 0
    d.grants = [*d.grants, grant(50, eff=clock.now - 30)]  # granted after the first
    assert await alerts.evaluate_once() == 0  # 0.50 of 1.50 left: above 20%
    await spend(book, d, clock, 3)
    assert await alerts.evaluate_once() == 1
    assert [t for t, _ in await events(box)] == ["credit.low", "credit.exhausted", "credit.low"]
