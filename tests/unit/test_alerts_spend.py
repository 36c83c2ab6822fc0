"""Spend thresholds: spend.threshold_reached once per threshold and period, priced as /v1/usage."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support import Clock
from tollhouse.alerts import SpendAlerts
from tollhouse.billing.usage import UsageReport, current_usage
from tollhouse.config import parse_config
from tollhouse.store import migrate, open_store
from tollhouse.webhooks import Outbox

CFG = parse_config(
    {
        "store": {"url": "sqlite:///unused.db"},
        "plans": {
            "payg": {
                "features": [],
                "price": {"base_fee": "5.00", "meters": {"requests": {"unit_price": "0.10"}}},
            }
        },
        "customers": {"acme": {"plan": "payg"}},
        "alerts": {"plans": {"payg": {"spend": [{"amount_minor": 100}, {"amount_minor": 500}]}}},
    }
)


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Outbox]:
    """An outbox on a migrated SQLite store, with one endpoint for every event."""
    url = f"sqlite://{tmp_path}/store.db"
    await migrate(url)
    b = await open_store(url)
    outbox = Outbox(b, clock=time.time)
    await outbox.create_endpoint(actor="t", url="https://hooks.test/", events=["*"])
    yield outbox
    await b.close()


class Usage:
    """acme's requests this period, priced by billing's own ``current_usage``."""

    def __init__(self) -> None:
        self.requests = 0
        self.clock = Clock(1_800_000_000.0)

    def totals(self, customer: str, start_ms: int, end_ms: int) -> Mapping[str, int]:
        return {"requests": self.requests} if customer == "acme" else {}

    async def lookup(self, customer: str) -> UsageReport | None:
        return current_usage(CFG, customer, totals=self.totals, clock=self.clock)


def alerts(box: Outbox, usage: Usage) -> SpendAlerts:
    """An evaluator over acme alone."""
    plan_of: Any = lambda cid: "payg" if cid == "acme" else None  # noqa: E731
    return SpendAlerts(
        CFG.alerts, customers=lambda: ["acme"], plan_of=plan_of, lookup=usage.lookup, emit=box.emit
    )


async def test_each_spend_threshold_fires_once_on_usage_charges_not_the_base_fee(
    box: Outbox,
) -> None:
    """1.00 and 5.00 of usage each fire once (the 5.00 base fee does not count), on 2 replicas."""
    usage = Usage()
    one, two = alerts(box, usage), alerts(box, usage)
    usage.requests = 9  # 0.90
    assert await one.evaluate_once() == 0
    usage.requests = 10  # 1.00
    assert [await one.evaluate_once(), await two.evaluate_once()] == [1, 0]
    usage.requests = 60  # 6.00
    assert [await two.evaluate_once(), await one.evaluate_once(), await one.evaluate_once()] == [
        1,
        0,
        0,
    ]
    payloads = [
        (await box.get_event(d.event_id)).to_json()["payload"]
        for d in reversed(await box.list_deliveries())
    ]
    assert [
        (p["type"], p["data"]["threshold"]["amount_minor"], p["data"]["spent"]) for p in payloads
    ] == [("spend.threshold_reached", 100, 100), ("spend.threshold_reached", 500, 600)]
