"""Webhook test support: a fast delivery config, a running delivery loop, waiting for delivery."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from tollhouse.config import WebhooksConfig
from tollhouse.webhooks import Deliverer, Outbox

__all__ = ["FAST", "running", "until_delivered"]

FAST = WebhooksConfig(
    max_attempts=50,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
    request_timeout_ms=2000,
    poll_interval_ms=20,
    lease_s=5,
    batch_size=10,
)


@contextlib.asynccontextmanager
async def running(d: Deliverer) -> AsyncIterator[Deliverer]:
    """Run a delivery loop for the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        yield d
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until_delivered(box: Outbox, within_s: float = 20.0) -> None:
    """Wait until every delivery of ``box`` is delivered (fail after ``within_s``)."""
    deadline = time.monotonic() + within_s
    while any(d.state != "delivered" for d in await box.list_deliveries()):
        assert time.monotonic() < deadline, "not all delivered in time"
        await asyncio.sleep(0.05)
