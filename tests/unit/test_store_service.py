"""The store's service layer and migrations, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

import pytest

from tests.support.store import T0, Clock
from tollhouse.store import (
    SCHEMA_VERSION,
    SchemaError,
    ServiceError,
    StoreService,
    hash_key,
    migrate,
    open_store,
    period_start,
)
from tollhouse.store.backend import connect_backend


@pytest.fixture
async def service(store_url: str) -> AsyncIterator[tuple[StoreService, Clock]]:
    """A migrated store and its service, with a settable clock."""
    await migrate(store_url)
    clock = Clock()
    backend = await open_store(store_url)
    yield StoreService(backend, clock=clock, plans={"free", "pro"}, meters={"requests"}), clock
    await backend.close()


async def test_migrate_is_idempotent_and_open_refuses_unmigrated(store_url: str) -> None:
    """An unmigrated store is refused; migrate twice gives the same version; then it opens."""
    with pytest.raises(SchemaError, match="not migrated"):
        await open_store(store_url)
    assert await migrate(store_url) == SCHEMA_VERSION
    assert await migrate(store_url) == SCHEMA_VERSION
    backend = await open_store(store_url)
    await backend.close()


async def test_newer_schema_is_refused(store_url: str) -> None:
    """A store migrated by a newer tollhouse is refused by open_store and by migrate."""
    await migrate(store_url)
    backend = connect_backend(store_url)
    async with backend.transaction() as tx:
        await tx.execute("UPDATE tollhouse_schema SET version = ?", (SCHEMA_VERSION + 1,))
    await backend.close()
    with pytest.raises(SchemaError, match="newer"):
        await open_store(store_url)
    with pytest.raises(SchemaError, match="newer"):
        await migrate(store_url)


async def test_customer_lifecycle_writes_audit_and_changes(
    service: tuple[StoreService, Clock],
) -> None:
    """Create, update, read and list customers; each write has one audit row and one change."""
    svc, _ = service
    c = await svc.create_customer(
        actor="cli",
        name="Acme",
        plan="free",
        customer_id="acme",
        email="ops@acme.test",
        metadata={"crm": "42"},
    )
    assert (c.plan, c.status, c.anchor) == ("free", "active", date(2025, 11, 24))
    c2 = await svc.update_customer("acme", actor="adm1", name="Acme Inc")
    assert c2.name == "Acme Inc"
    assert c2.email == "ops@acme.test"
    await svc.create_customer(actor="cli", name="Beta", plan="pro", customer_id="beta")
    assert [x.id for x in await svc.list_customers()] == ["acme", "beta"]
    assert [x.id for x in await svc.list_customers(after="acme")] == ["beta"]
    audit = await svc.audit_log(target="acme")
    assert [(a.actor, a.action) for a in audit] == [
        ("cli", "customer.create"),
        ("adm1", "customer.update"),
    ]
    assert audit[1].before["name"] == "Acme"
    assert audit[1].after["name"] == "Acme Inc"
    async with svc.backend.transaction(readonly=True) as tx:
        rows = await tx.execute("SELECT entity, entity_id FROM changes ORDER BY version")
    assert [tuple(r) for r in rows] == [
        ("customer", "acme"),
        ("customer", "acme"),
        ("customer", "beta"),
    ]


async def test_errors_have_stable_codes(service: tuple[StoreService, Clock]) -> None:
    """Duplicates, unknown customers, plans, meters and statuses are refused with their codes."""
    svc, _ = service
    await svc.create_customer(actor="cli", name="A", plan="free", customer_id="a")
    cases = [
        (
            svc.create_customer(actor="cli", name="A", plan="free", customer_id="a"),
            "already_exists",
        ),
        (svc.get_customer("nobody"), "not_found"),
        (svc.change_plan("a", "gold", actor="cli"), "unknown_plan"),
        (svc.set_override("a", "bytes", 5, actor="cli"), "unknown_meter"),
        (svc.set_status("a", "frozen", actor="cli"), "invalid"),
        (svc.revoke_key("key_nope", actor="cli"), "not_found"),
    ]
    for coro, code in cases:
        with pytest.raises(ServiceError) as e:
            await coro
        assert e.value.code == code


async def test_plan_change_keeps_history_and_applies_at_effective_time(
    service: tuple[StoreService, Clock],
) -> None:
    """A future plan change is recorded at once and becomes the plan when its time comes."""
    svc, clock = service
    await svc.create_customer(actor="cli", name="A", plan="free", customer_id="a")
    c = await svc.change_plan("a", "pro", actor="cli", effective_at=T0 + 3600)
    assert c.plan == "free"
    assert [(p.plan, p.effective_from) for p in c.plan_changes] == [
        ("free", T0),
        ("pro", T0 + 3600),
    ]
    clock.t = T0 + 3600
    assert (await svc.get_customer("a")).plan == "pro"
    later = await svc.change_plan("a", "free", actor="cli", effective_at=T0 + 7200)
    superseding = await svc.change_plan("a", "free", actor="cli", effective_at=T0 + 5000)
    assert len(later.plan_changes) == 3
    assert [p.effective_from for p in superseding.plan_changes] == [T0, T0 + 3600, T0 + 5000]
    with pytest.raises(ServiceError) as e:
        await svc.change_plan("a", "free", actor="cli", effective_at=T0 + 10)
    assert e.value.code == "effective_at_too_early"


async def test_keys_store_only_hashes_and_revoke(service: tuple[StoreService, Clock]) -> None:
    """An issued key is returned once; the store holds its SHA-256; revoke is once only."""
    svc, clock = service
    await svc.create_customer(actor="cli", name="A", plan="free", customer_id="a")
    issued = await svc.issue_key("a", actor="cli")
    assert issued.key.startswith("th_")
    assert len(issued.key) == 46
    assert issued.key not in repr(issued)
    async with svc.backend.transaction(readonly=True) as tx:
        rows = await tx.execute("SELECT sha256, prefix FROM api_keys")
    assert rows[0][0] == hash_key(issued.key)
    assert issued.key.startswith(rows[0][1])
    clock.t += 5
    revoked = await svc.revoke_key(issued.info.id, actor="cli")
    assert revoked.revoked_at == T0 + 5
    with pytest.raises(ServiceError) as e:
        await svc.revoke_key(issued.info.id, actor="cli")
    assert e.value.code == "already_revoked"
    assert [k.id for k in await svc.list_keys("a")] == [issued.info.id]


async def test_status_overrides_and_topups(service: tuple[StoreService, Clock]) -> None:
    """Status changes record status_since; overrides set and clear; top-ups key on the period."""
    svc, clock = service
    await svc.create_customer(
        actor="cli", name="A", plan="free", customer_id="a", anchor=date(2025, 10, 31)
    )
    clock.t += 10
    c = await svc.set_status("a", "suspended", actor="cli")
    assert (c.status, c.status_since) == ("suspended", T0 + 10)
    assert (await svc.set_override("a", "requests", 5000, actor="cli")).quota_overrides == {
        "requests": 5000
    }
    assert (await svc.set_override("a", "requests", None, actor="cli")).quota_overrides == {}
    t = await svc.add_topup("a", "requests", 100, actor="cli")
    assert t.period == "2025-10-31"  # Nov has 30 days: the period started on Oct 31
    assert [x.units for x in await svc.list_topups("a")] == [100]
    actions = [a.action for a in await svc.audit_log(target="a")]
    assert actions == [
        "customer.create",
        "subscription.set_status",
        "override.set",
        "override.set",
        "topup.add",
    ]


def test_period_start_clamps_to_month_end() -> None:
    """Periods start on the anchor day, clamped to short months; no anchor means the 1st."""
    assert period_start(date(2025, 1, 31), T0) == date(2025, 10, 31)
    assert period_start(date(2025, 1, 15), T0) == date(2025, 11, 15)
    assert period_start(None, T0) == date(2025, 11, 1)
    assert period_start(date(2024, 2, 29), 1_740_787_200.0) == date(2025, 2, 28)  # 2025-03-01


async def test_v1_store_migrates_to_v2_keeping_customers(store_url: str) -> None:
    """A v1 store is refused until migrated to v2; its customers keep, with no Stripe id yet."""
    from tollhouse.store.schema import _v1

    backend = connect_backend(store_url)
    async with backend.transaction() as tx:  # what the previous release's migrate left
        for stmt in _v1(backend.dialect):
            await tx.execute(stmt)
        await tx.execute("CREATE TABLE tollhouse_schema (version INTEGER NOT NULL)")
        await tx.execute("INSERT INTO tollhouse_schema (version) VALUES (1)")
        await tx.execute(
            "INSERT INTO customers (id, name, email, metadata, created_at)"
            " VALUES ('acme', 'Acme', '', '{}', ?)",
            (T0,),
        )
        await tx.execute(
            "INSERT INTO subscriptions (customer, anchor, status, status_since)"
            " VALUES ('acme', '2025-11-01', 'active', ?)",
            (T0,),
        )
        await tx.execute(
            "INSERT INTO plan_changes (customer, plan, effective_from, created_at)"
            " VALUES ('acme', 'pro', ?, ?)",
            (T0, T0),
        )
    await backend.close()
    with pytest.raises(SchemaError, match=f"older than {SCHEMA_VERSION}"):
        await open_store(store_url)
    assert await migrate(store_url) == SCHEMA_VERSION
    svc = StoreService(await open_store(store_url), clock=Clock())
    try:
        c = await svc.get_customer("acme")
        assert (c.plan, c.stripe_customer_id) == ("pro", None)
        c = await svc.update_customer("acme", actor="t", stripe_customer_id="cus_Q")
        assert (await svc.get_customer("acme")).stripe_customer_id == "cus_Q"
        with pytest.raises(ServiceError, match="stripe_customer_id"):
            await svc.update_customer("acme", actor="t", stripe_customer_id="x y")
    finally:
        await svc.backend.close()
