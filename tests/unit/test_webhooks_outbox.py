"""The webhook outbox in the store (SQLite and a real PostgreSQL): endpoints, events, claims."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.servers import PostgresServer
from tests.support import Clock
from tollhouse.store import ServiceError, StoreService, migrate, open_store
from tollhouse.webhooks import DeliveryQueue, Outbox


def _pg(server: PostgresServer) -> str:
    return server.fresh_database_url("wh_")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store URL of each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/store.db"
    return _pg(request.getfixturevalue("postgres_server"))


@pytest.fixture
async def outbox(store_url: str) -> AsyncIterator[tuple[Outbox, DeliveryQueue, Clock]]:
    """A migrated store's outbox and queue, with a settable clock."""
    await migrate(store_url)
    clock = Clock()
    backend = await open_store(store_url)
    yield Outbox(backend, clock=clock), DeliveryQueue(backend, clock=clock), clock
    await backend.close()


async def test_endpoint_lifecycle_is_audited_without_the_secret(
    outbox: tuple[Outbox, DeliveryQueue, Clock],
) -> None:
    """Create, disable, enable, delete: each in the audit log; the secret is in none of them."""
    box, _, clock = outbox
    ep, secret = await box.create_endpoint(
        actor="t", url="https://example.test/h", events=["quota.threshold_reached"]
    )
    assert secret.startswith("whsec_")
    assert ep.enabled
    assert [e.id for e in await box.list_endpoints()] == [ep.id]
    assert not (await box.set_enabled(ep.id, False, actor="t")).enabled
    assert (await box.set_enabled(ep.id, True, actor="t")).enabled
    await box.delete_endpoint(ep.id, actor="t")
    assert await box.list_endpoints() == []
    with pytest.raises(ServiceError) as e:
        await box.get_endpoint(ep.id)
    assert e.value.code == "not_found"
    audit = await StoreService(box.backend, clock=clock).audit_log(target=ep.id)
    assert [a.action for a in audit] == [
        "webhook.create",
        "webhook.disable",
        "webhook.enable",
        "webhook.delete",
    ]
    assert secret not in json.dumps([a.to_json() for a in audit])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "ftp://example.test/"),
        ("url", "https://user:pw@example.test/"),
        ("url", "nohost"),
        ("events", []),
        ("events", ["no.such_event"]),
        ("secret", "plain"),
        ("secret", "whsec_c2hvcnQ="),
    ],
)
async def test_bad_endpoint_input_is_refused_by_field(
    outbox: tuple[Outbox, DeliveryQueue, Clock], field: str, value: object
) -> None:
    """A bad url, events filter or secret is ``invalid`` and names the field."""
    box, _, _ = outbox
    args: dict[str, object] = {"url": "https://example.test/h", "events": ["*"], "secret": None}
    args[field] = value
    with pytest.raises(ServiceError) as e:
        await box.create_endpoint(actor="t", **args)  # type: ignore[arg-type]
    assert e.value.code == "invalid"
    assert e.value.detail.startswith(field)


async def test_emit_records_once_per_dedupe_key_with_deliveries_by_filter(
    outbox: tuple[Outbox, DeliveryQueue, Clock],
) -> None:
    """The same dedupe key is recorded once; deliveries go to subscribed, enabled endpoints."""
    box, _, _ = outbox
    quota, _ = await box.create_endpoint(
        actor="t", url="https://a.test/", events=["quota.threshold_reached"]
    )
    other, _ = await box.create_endpoint(actor="t", url="https://b.test/", events=["credit.low"])
    every, _ = await box.create_endpoint(actor="t", url="https://c.test/", events=["*"])
    off, _ = await box.create_endpoint(actor="t", url="https://d.test/", events=["*"])
    await box.set_enabled(off.id, False, actor="t")
    data = {"meter": "requests", "threshold_percent": 80}
    assert await box.emit("quota.threshold_reached", "acme", "k1", data) is True
    assert await box.emit("quota.threshold_reached", "acme", "k1", data) is False
    deliveries = await box.list_deliveries()
    assert sorted(d.endpoint_id for d in deliveries) == sorted([quota.id, every.id])
    assert {d.event_id for d in deliveries} == {deliveries[0].event_id}
    event = await box.get_event(deliveries[0].event_id)
    assert event.to_json()["payload"]["data"] == data
    assert other.id not in {d.endpoint_id for d in deliveries}


async def test_claims_are_exclusive_until_the_lease_expires_and_settling_is_fenced(
    outbox: tuple[Outbox, DeliveryQueue, Clock],
) -> None:
    """A claimed delivery is not claimed again until its lease ends; the old owner can't settle."""
    box, queue, clock = outbox
    await box.create_endpoint(actor="t", url="https://a.test/", events=["*"])
    await box.emit("invoice.issued", "acme", "inv-1", {"invoice": "inv-1"})
    first = await queue.claim("r1", 10, lease_s=30)
    assert len(first) == 1
    assert await queue.claim("r2", 10, lease_s=30) == []
    clock.now += 31
    second = await queue.claim("r2", 10, lease_s=30)
    assert [c.event_id for c in second] == [first[0].event_id]
    assert (
        await queue.settle(first[0], "r1", status=200, error=None, next_attempt_at=None, dead=False)
        is False
    )
    assert (
        await queue.settle(
            second[0], "r2", status=200, error=None, next_attempt_at=None, dead=False
        )
        is True
    )
    [d] = await box.list_deliveries()
    assert (d.state, d.attempts, d.last_status) == ("delivered", 1, 200)
    assert (await queue.stats()).pending == 0


async def test_redelivery_of_an_event_and_of_dead_deliveries(
    outbox: tuple[Outbox, DeliveryQueue, Clock],
) -> None:
    """A delivered event can be sent again; dead deliveries of an endpoint go back to pending."""
    box, queue, _ = outbox
    ep, _ = await box.create_endpoint(actor="t", url="https://a.test/", events=["*"])
    await box.emit("credit.low", "acme", "c1", {})
    await box.emit("credit.low", "acme", "c2", {})
    claimed = await queue.claim("r", 10, lease_s=30)
    await queue.settle(claimed[0], "r", status=200, error=None, next_attempt_at=None, dead=False)
    await queue.settle(
        claimed[1], "r", status=500, error="HTTP 500", next_attempt_at=None, dead=True
    )
    assert (await queue.stats()).dead == 1
    again = await box.redeliver_event(claimed[0].event_id, actor="t")
    assert [(d.state, d.attempts) for d in again] == [("pending", 0)]
    assert await box.redeliver_dead(ep.id, actor="t") == 1
    stats = await queue.stats()
    assert (stats.pending, stats.dead) == (2, 0)
    with pytest.raises(ServiceError):
        await box.redeliver_event("evt_missing", actor="t")


async def test_test_event_goes_only_to_its_endpoint(
    outbox: tuple[Outbox, DeliveryQueue, Clock],
) -> None:
    """``send_test`` queues a webhook.test for that endpoint only; a disabled one is refused."""
    box, _, _ = outbox
    a, _ = await box.create_endpoint(actor="t", url="https://a.test/", events=["credit.low"])
    await box.create_endpoint(actor="t", url="https://b.test/", events=["*"])
    event = await box.send_test(a.id, actor="t")
    assert event.type == "webhook.test"
    assert [d.endpoint_id for d in await box.list_deliveries(event_id=event.id)] == [a.id]
    await box.set_enabled(a.id, False, actor="t")
    with pytest.raises(ServiceError) as e:
        await box.send_test(a.id, actor="t")
    assert e.value.code == "conflict"
