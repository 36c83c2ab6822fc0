"""Webhook delivery to a real local HTTP receiver: signatures, outages, dead letters, replicas."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from tests.servers import PostgresServer
from tests.support.webhooks import FAST, running, until_delivered
from tests.webhook_receiver import Receiver
from tollhouse.config import WebhooksConfig
from tollhouse.store import migrate, open_store
from tollhouse.store.backend import Backend
from tollhouse.webhooks import Deliverer, DeliveryQueue, Outbox, backoff_s


async def eventually(pred: Callable[[], object], within_s: float = 20.0) -> None:
    """Poll ``pred`` until it is true; fail after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """A migrated SQLite store."""
    url = f"sqlite://{tmp_path}/store.db"
    await migrate(url)
    b = await open_store(url)
    yield b
    await b.close()


def _deliverer(b: Backend, cfg: WebhooksConfig = FAST, owner: str = "r1") -> Deliverer:
    return Deliverer(
        DeliveryQueue(b, clock=time.time), cfg, owner=owner, clock=time.time, rng=random.Random(7)
    )


async def test_deliveries_are_signed_per_standard_webhooks(backend: Backend) -> None:
    """The receiver verifies the body with standardwebhooks and the endpoint's secret."""
    rx = await Receiver().start()
    box = Outbox(backend, clock=time.time)
    _, secret = await box.create_endpoint(actor="t", url=rx.url, events=["*"])
    await box.emit("quota.threshold_reached", "acme", "q-80", {"threshold_percent": 80})
    try:
        async with running(_deliverer(backend)):
            await eventually(lambda: rx.seen)
    finally:
        await rx.stop()
    got = rx.seen[0]
    payload = Webhook(secret).verify(got.body, got.headers)
    assert payload["type"] == "quota.threshold_reached"
    assert payload["data"] == {"threshold_percent": 80}
    assert payload["id"] == got.headers["webhook-id"]
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(got.body.replace("80", "81"), got.headers)


async def test_receiver_stopped_and_restarted_mid_delivery_loses_nothing(backend: Backend) -> None:
    """Requests cut off by a receiver restart are retried: nothing lost, duplicates identical.

    Every event arrives, and every duplicate carries the same webhook-id and the same body.
    """
    rx = await Receiver(hang=True).start()
    box = Outbox(backend, clock=time.time)
    await box.create_endpoint(actor="t", url=rx.url, events=["*"])
    for i in range(8):
        await box.emit("invoice.issued", f"c{i}", f"inv-{i}", {"n": i})
    events = {d.event_id for d in await box.list_deliveries()}
    d = _deliverer(backend)
    async with running(d):
        await eventually(lambda: len(set(rx.ids())) == 8)  # every one in flight, unanswered
        attempted = d.attempted
        await rx.stop()
        rx.hang = False
        # The 8 cut off end as failed attempts; at least one more fails while nothing listens.
        await eventually(lambda: d.attempted >= attempted + len(events) + 1)
        await rx.start()
        await until_delivered(box)
    await rx.stop()
    assert set(rx.ids()) == events
    assert len(rx.ids()) > len(events)  # the ones cut off were sent again
    bodies: dict[str, set[str]] = {}
    for r in rx.seen:
        bodies.setdefault(r.headers["webhook-id"], set()).add(r.body)
    assert all(len(b) == 1 for b in bodies.values())
    assert all(json.loads(next(iter(b)))["id"] == i for i, b in bodies.items())


async def test_dead_letter_after_max_attempts_then_redelivery(backend: Backend) -> None:
    """Exactly max_attempts tries to a failing receiver, then dead; redelivery sends it again.

    Redelivery on demand succeeds once the receiver recovers (same webhook-id).
    """
    rx = await Receiver(status=500).start()
    box = Outbox(backend, clock=time.time)
    ep, _ = await box.create_endpoint(actor="t", url=rx.url, events=["*"])
    await box.emit("credit.exhausted", "acme", "ce-1", {})
    cfg = FAST.model_copy(update={"max_attempts": 3})
    try:
        async with running(_deliverer(backend, cfg)) as d:
            await eventually(lambda: d.status()["pending"] == 0 and len(rx.seen) >= 3)
            [dead] = await box.list_deliveries()
            assert (dead.state, dead.attempts, dead.last_status) == ("dead", 3, 500)
            assert len(rx.seen) == 3
            rx.status = 200
            assert await box.redeliver_dead(ep.id, actor="t") == 1
            await until_delivered(box)
    finally:
        await rx.stop()
    assert len(set(rx.ids())) == 1
    assert len(rx.seen) == 4


def test_backoff_is_exponential_capped_and_jittered() -> None:
    """Attempt n waits between half and all of min(max, initial * 2**(n-1))."""
    cfg = WebhooksConfig(backoff_initial_s=1, backoff_max_s=60)
    rng = random.Random(1)
    for n, full in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)]:
        waits = [backoff_s(cfg, n, rng) for _ in range(50)]
        assert all(full / 2 <= w < full for w in waits)
        assert len(set(waits)) > 1


async def test_two_loops_on_postgresql_never_deliver_one_event_concurrently(
    postgres_server: PostgresServer,
) -> None:
    """Two replicas' loops on one PostgreSQL store never send one event twice at once.

    No attempt failed, so each event arrives exactly once, and both loops took part.
    """
    url = postgres_server.fresh_database_url("whd_")
    await migrate(url)
    b1, b2 = await open_store(url), await open_store(url)
    rx = await Receiver(delay_s=0.05).start()
    box = Outbox(b1, clock=time.time)
    await box.create_endpoint(actor="t", url=rx.url, events=["*"])
    for i in range(40):
        await box.emit("usage.unattributed", f"c{i}", f"u-{i}", {"n": i})
    cfg = FAST.model_copy(update={"batch_size": 3})
    d1, d2 = _deliverer(b1, cfg, "r1"), _deliverer(b2, cfg, "r2")
    try:
        async with running(d1), running(d2):
            await until_delivered(box, 60)
    finally:
        await rx.stop()
        await b1.close()
        await b2.close()
    assert len(rx.ids()) == 40
    assert len(set(rx.ids())) == 40
    assert max(rx.max_in_flight.values()) == 1
    assert d1.attempted > 0
    assert d2.attempted > 0  # both loops took part


def test_config_errors_name_the_dotted_field() -> None:
    """A lease no longer than a send, or a backoff cap below its start, is refused by path."""
    from tollhouse.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as e:
        parse_config(
            {
                "webhooks": {
                    "lease_s": 1,
                    "request_timeout_ms": 5000,
                    "backoff_initial_s": 10,
                    "backoff_max_s": 1,
                }
            }
        )
    assert [p for p, _ in e.value.problems] == ["webhooks.backoff_max_s", "webhooks.lease_s"]


async def test_runners_of_one_instance_name_hold_distinct_lease_owners(tmp_path: Path) -> None:
    """Two serve processes given the same instance name claim deliveries as different owners."""
    from tollhouse.webhooks.runner import WebhookRunner

    url = f"sqlite://{tmp_path}/store.db"
    await migrate(url)
    runners = [WebhookRunner(url, FAST, clock=time.time, owner="pod-a") for _ in range(2)]
    try:
        owners = {r.owner for r in runners}
        assert len(owners) == 2
        assert all(o.startswith("pod-a:") for o in owners)
    finally:
        for r in runners:
            await r.backend.close()
