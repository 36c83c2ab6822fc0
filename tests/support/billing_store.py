"""Billing-with-a-store test support: plans, a store-backed config, running the job, events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import Clock
from tests.support.billing import PLANS
from tollhouse.billing.job import run_billing
from tollhouse.config import Config, parse_config
from tollhouse.store import StoreService, migrate, open_store
from tollhouse.webhooks import Outbox

__all__ = ["MY_PLANS", "bill", "config", "in_store", "invoice_events", "migrated_store_url"]

MY_PLANS: dict[str, Any] = {
    **PLANS,
    "team": {
        "price": {
            "currency": "USD",
            "base_fee": "19.99",
            "meters": {"requests": {"model": "per_unit", "included": 50, "unit_price": "0.003"}},
        }
    },
}


@pytest.fixture(name="store_url", params=["sqlite", "postgresql"])
def migrated_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``store_url``: a migrated, empty store of each backend (PostgreSQL: a fresh database)."""
    url = (
        f"sqlite://{tmp_path}/store.db"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_server").fresh_database_url("bs_")
    )
    asyncio.run(migrate(url))
    return url


def in_store(url: str, clock: Clock, op: Callable[[StoreService], Awaitable[object]]) -> None:
    """Run one async operation against the store's service (plans checked against MY_PLANS)."""

    async def go() -> None:
        backend = await open_store(url)
        try:
            await op(StoreService(backend, clock=clock, plans=set(MY_PLANS)))
        finally:
            await backend.close()

    asyncio.run(go())


def config(tmp: Path, store_url: str, customers: dict[str, Any] | None = None) -> Config:
    """A config with the billing test plans plus ``team``, a SQLite meter/ledger and the store."""
    return parse_config(
        {
            "meters": {"requests": {}, "tokens": {"from_response_header": "x-tokens"}},
            "plans": MY_PLANS,
            "customers": customers or {},
            "metering": {"meter": f"sqlite:///{tmp}/meter.db"},
            "billing": {"ledger": f"sqlite:///{tmp}/ledger.db", "invoices_dir": str(tmp / "inv")},
            "store": {"url": store_url},
        }
    )


def bill(cfg: Config, tmp: Path, period: str, now: float) -> dict[str, dict[str, Any]]:
    """Run the job (subscriptions from ``cfg.store``); return each customer's JSON invoice."""
    res = run_billing(cfg, period=period, out_dir=tmp / "out", preview=False, clock=lambda: now)
    assert res.ok, res.problems
    return {
        i.customer: json.loads((tmp / "out" / f"{i.number}.json").read_text()) for i in res.invoices
    }


def invoice_events(url: str) -> list[dict[str, object]]:
    """Every event the store's outbox recorded, as JSON."""

    async def go() -> list[dict[str, object]]:
        backend = await open_store(url)
        try:
            box = Outbox(backend, clock=Clock())
            out = []
            for d in await box.list_deliveries():
                out.append((await box.get_event(d.event_id)).to_json())
            return out
        finally:
            await backend.close()

    return asyncio.run(go())
