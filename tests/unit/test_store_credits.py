"""Credit grants, spend caps and recharge rules in the store, and in every replica's Directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest

from tests.support.store import T0, Clock, eventually, fresh_pg_url, make_service
from tollhouse.config import StoreConfig
from tollhouse.store import Directory, ServiceError, StoreService


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store URL of each backend (a sync fixture: the server starts outside the loop)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/store.db"
    return fresh_pg_url(request.getfixturevalue("postgres_server"))


@pytest.fixture
async def setup(url: str) -> AsyncIterator[tuple[StoreService, Directory, Clock]]:
    """A store of each backend with customer ``a`` and a started Directory on it."""
    clock = Clock()
    svc = await make_service(url, clock)
    await svc.create_customer(
        actor="cli", name="A", plan="free", customer_id="a", anchor=date(2025, 11, 1)
    )
    d = Directory(StoreConfig(url=url, poll_interval_ms=200), clock=clock)
    await d.start()
    yield svc, d, clock
    await d.stop()
    await svc.backend.close()


async def test_grants_listed_in_priority_then_expiry_order(
    setup: tuple[StoreService, Directory, Clock],
) -> None:
    """Grants list by priority, then the earliest expiry; no expiry sorts last."""
    svc, _, _ = setup
    late = await svc.grant_credit("a", actor="t", amount=100, currency="USD", priority=5)
    soon = await svc.grant_credit(
        "a", actor="t", amount=200, currency="USD", priority=5, expires_at=T0 + 3600
    )
    first = await svc.grant_credit(
        "a",
        actor="t",
        amount=300,
        currency="USD",
        priority=1,
        source="promotional",
        meters=["requests"],
    )
    assert [g.id for g in await svc.list_grants("a")] == [first.id, soon.id, late.id]
    assert first.to_json()["scope"] == {"meters": ["requests"], "features": []}
    assert (soon.amount, soon.expires_at, first.source) == (200, T0 + 3600, "promotional")


async def test_grant_and_void_are_audited_and_reach_the_directory_within_a_second(
    setup: tuple[StoreService, Directory, Clock],
) -> None:
    """A grant appears in memory within 1 s; a voided grant disappears; both are audited."""
    svc, d, _ = setup
    g = await svc.grant_credit("a", actor="admin:x", amount=150, currency="EUR")
    assert await eventually(lambda: [x.id for x in d.customer("a").credit_grants] == [g.id], 1.0)
    voided = await svc.void_grant("a", g.id, actor="admin:x")
    assert voided.voided_at is not None
    assert await eventually(lambda: d.customer("a").credit_grants == (), 1.0)
    actions = [(e.action, e.actor) for e in await svc.audit_log(target="a")]
    assert ("credit.grant", "admin:x") in actions
    assert ("credit.void", "admin:x") in actions
    with pytest.raises(ServiceError) as e:
        await svc.void_grant("a", g.id, actor="t")
    assert e.value.code == "already_voided"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": 10**16}, "amount"),
        ({"currency": "usd"}, "currency"),
        ({"priority": -1}, "priority"),
        ({"source": "gift"}, "source"),
        ({"expires_at": T0 - 1}, "expires_at"),
        ({"meters": ["bad name"]}, "scope.meters"),
    ],
)
async def test_bad_grants_are_refused_naming_the_field(
    setup: tuple[StoreService, Directory, Clock], kwargs: dict[str, object], field: str
) -> None:
    """Every bad grant value is ``invalid`` with the field's name; nothing is stored."""
    svc, _, _ = setup
    args: dict[str, object] = {"amount": 100, "currency": "USD", **kwargs}
    with pytest.raises(ServiceError) as e:
        await svc.grant_credit("a", actor="t", **args)  # type: ignore[arg-type]
    assert (e.value.code, e.value.detail.split(" ")[0]) == ("invalid", field)
    assert await svc.list_grants("a") == []


async def test_grant_to_unknown_customer_is_not_found(
    setup: tuple[StoreService, Directory, Clock],
) -> None:
    """A grant for a customer the store does not know is ``not_found``."""
    svc, _, _ = setup
    with pytest.raises(ServiceError) as e:
        await svc.grant_credit("nobody", actor="t", amount=1, currency="USD")
    assert e.value.code == "not_found"


async def test_consumption_adds_up_and_seeds_a_fresh_directory(
    setup: tuple[StoreService, Directory, Clock],
) -> None:
    """Flushed spend adds atomically per grant; a replica that loads later starts from it."""
    svc, d, clock = setup
    g = await svc.grant_credit("a", actor="t", amount=1000, currency="USD")
    await svc.add_consumed([(g.id, 30), (g.id, 12)])
    await svc.add_consumed([(g.id, 1)])
    assert await svc.consumed("a") == {g.id: 43}
    fresh = Directory(StoreConfig(url=d._url), clock=clock)
    await fresh.start()
    try:
        assert fresh.credit_seed(g.id) == 43
    finally:
        await fresh.stop()


async def test_recharge_rule_and_spend_cap_reach_the_directory(
    setup: tuple[StoreService, Directory, Clock],
) -> None:
    """The recharge rule and the current period's spend cap appear in memory, and go."""
    svc, d, _ = setup
    rule = await svc.set_recharge_rule("a", 200, 1000, actor="t")
    cap = await svc.set_spend_cap("a", 5000, actor="t")
    assert rule is not None
    assert cap is not None
    assert cap.period == "2025-11-01"
    assert await eventually(
        lambda: (d.customer("a").recharge, d.customer("a").spend_cap) == ((200, 1000), 5000), 1.0
    )
    assert await svc.set_spend_cap("a", None, actor="t") is None
    assert await svc.set_recharge_rule("a", None, actor="t") is None
    assert await eventually(
        lambda: (d.customer("a").recharge, d.customer("a").spend_cap) == (None, None), 1.0
    )
    with pytest.raises(ServiceError, match="target"):
        await svc.set_recharge_rule("a", 500, 500, actor="t")


def test_balance_counts_only_usable_grants_in_thousandths_of_a_minor_unit() -> None:
    """The balance sums what is left of usable grants; expired, voided and future ones count 0."""
    from tollhouse.store.credit_models import MILLI, CreditGrant, balance_milli, remaining_milli

    def grant(
        gid: str,
        amount: int,
        eff: float = 0.0,
        exp: float | None = None,
        voided: float | None = None,
    ) -> CreditGrant:
        return CreditGrant(
            gid, "a", amount, "USD", 10, eff, exp, frozenset(), frozenset(), "purchase", voided, 0.0
        )

    gs = [
        grant("live", 100),
        grant("spent", 50),
        grant("expired", 70, exp=T0),
        grant("voided", 80, voided=1.0),
        grant("future", 90, eff=T0 + 60),
    ]
    consumed = {"live": 10_500, "spent": 60 * MILLI}
    assert remaining_milli(gs[1], consumed["spent"]) == 0  # over-spent: nothing left, not < 0
    assert balance_milli(gs, consumed, T0) == 100 * MILLI - 10_500
    assert balance_milli(gs, consumed, T0 + 60) == 100 * MILLI - 10_500 + 90 * MILLI
