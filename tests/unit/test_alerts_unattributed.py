"""usage.unattributed: served requests never reserved, one event per replica and minute."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import Clock
from tollhouse.alerts import UnattributedUsage
from tollhouse.store import migrate, open_store
from tollhouse.webhooks import Outbox


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


async def test_drops_in_one_minute_are_one_event_with_their_count(box: Outbox) -> None:
    """3 + 2 dropped facts in one minute: one event (count 5) once the minute is over."""
    clock = Clock(1_800_000_000.0)
    rep = UnattributedUsage(emit=box.emit, instance="a", clock=clock)
    rep.add(3)
    clock.now += 20
    rep.add(2)
    assert await rep.flush() == 0  # the minute is not over yet
    clock.now += 40
    rep.add(7)  # the next minute
    assert await rep.flush() == 1
    assert await rep.flush() == 0
    assert await rep.flush(all_windows=True) == 1
    events = [
        (await box.get_event(d.event_id)).to_json()["payload"]
        for d in reversed(await box.list_deliveries())
    ]
    assert [(e["type"], e["data"]["count"]) for e in events] == [
        ("usage.unattributed", 5),
        ("usage.unattributed", 7),
    ]
    assert events[0]["data"]["window_start"] == "2027-01-15T08:00:00Z"
