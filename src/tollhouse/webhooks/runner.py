"""The webhook side of ``tollhouse serve``: its own store connection, the outbox and the loop.

``emit`` is the :data:`~tollhouse.webhooks.models.EmitEvent` that alert evaluation, credits and
the billing job record events through. Delivery never gates readiness (the Check does not use
it); ``/readyz`` reports its state under ``webhooks`` so an outage is visible, not hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
from collections.abc import Callable, Mapping

from tollhouse.config.webhooks import WebhooksConfig
from tollhouse.store.backend import connect_backend
from tollhouse.webhooks.delivery import Deliverer
from tollhouse.webhooks.outbox import Outbox
from tollhouse.webhooks.queue import DeliveryQueue

__all__ = ["WebhookRunner"]


class WebhookRunner:
    """Runs one delivery loop in the background while ``serve`` runs."""

    def __init__(
        self,
        store_url: str,
        cfg: WebhooksConfig,
        *,
        clock: Callable[[], float],
        owner: str,
        rng: random.Random | None = None,
    ) -> None:
        self.backend = connect_backend(store_url)
        self.outbox = Outbox(self.backend, clock=clock, emit_deadline_s=cfg.emit_deadline_ms / 1000)
        # The lease owner is unique per process: two replicas given one instance name (the same
        # hostname, say) must not release or complete each other's claimed deliveries.
        self.owner = f"{owner}:{os.getpid()}:{secrets.token_hex(4)}"
        self.deliverer = Deliverer(
            DeliveryQueue(self.backend, clock=clock), cfg, owner=self.owner, clock=clock, rng=rng
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def emit(
        self, event_type: str, customer_id: str | None, dedupe_key: str, data: Mapping[str, object]
    ) -> bool:
        """Record an event for delivery (see :meth:`Outbox.emit`)."""
        return await self.outbox.emit(event_type, customer_id, dedupe_key, data)

    async def start(self) -> None:
        """Start the delivery loop."""
        self._task = asyncio.create_task(self.deliverer.run(self._stop))

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop (an attempt in flight is abandoned: its lease expires, it is retried)."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
        await self.backend.close()

    def status(self) -> dict[str, object]:
        """What /readyz shows under ``webhooks``."""
        return self.deliverer.status()
