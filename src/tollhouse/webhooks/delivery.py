"""The delivery loop: claim due deliveries, sign them (Standard Webhooks), POST, settle.

Every replica may run it; the lease makes each claim exclusive (see :mod:`.queue`). Attempt ``n``
that fails waits ``min(backoff_max_s, backoff_initial_s * 2**(n-1))`` times a random factor in
[0.5, 1) (the injected RNG); after ``max_attempts`` the delivery is dead. A 2xx is delivered; any
other status, a timeout or a connection error is a failed attempt. Secrets and URLs are never
logged (URLs may carry tokens): logs name the endpoint and event ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from standardwebhooks import Webhook

from tollhouse.config.webhooks import WebhooksConfig
from tollhouse.logs import get_logger
from tollhouse.store.backend import StoreUnavailable
from tollhouse.webhooks.metrics import (
    WEBHOOK_DELIVERIES,
    WEBHOOK_OLDEST_PENDING_AGE,
    WEBHOOK_QUEUE_DEPTH,
    WEBHOOK_STORE_ERRORS,
)
from tollhouse.webhooks.models import Claimed
from tollhouse.webhooks.queue import DeliveryQueue

__all__ = ["Deliverer", "backoff_s", "signed_headers"]

log = get_logger(__name__)
USER_AGENT = "tollhouse-webhooks/1"


def backoff_s(cfg: WebhooksConfig, attempt: int, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential, jittered."""
    base = min(cfg.backoff_max_s, cfg.backoff_initial_s * 2.0 ** min(attempt - 1, 60))
    return float(base * (0.5 + 0.5 * rng.random()))


def signed_headers(secret: str, event_id: str, at: float, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` sent at ``at`` (Unix seconds)."""
    ts = datetime.fromtimestamp(int(at), UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at)),
        "webhook-signature": Webhook(secret).sign(event_id, ts, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


class Deliverer:
    """One delivery loop (``owner``: this replica's instance name)."""

    def __init__(
        self,
        queue: DeliveryQueue,
        cfg: WebhooksConfig,
        *,
        owner: str,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.queue = queue
        self.cfg = cfg
        self.owner = owner
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self._session: aiohttp.ClientSession | None = None
        self.store_ok: bool | None = None  # None: no round has run yet
        self.last_error: str | None = None
        self.pending = 0
        self.oldest_pending_age_s = 0.0
        self.attempted = 0  # attempts this loop made (all outcomes)

    async def run_once(self) -> int:
        """Claim one batch and attempt each delivery concurrently; return how many."""
        claimed = await self.queue.claim(self.owner, self.cfg.batch_size, self.cfg.lease_s)
        if claimed:
            await asyncio.gather(*(self._attempt(c) for c in claimed))
        return len(claimed)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a store outage is counted, reported and retried."""
        try:
            while not stop.is_set():
                busy = await self._round()
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.cfg.poll_interval_ms / 1000)
        finally:
            await self.close()

    async def _round(self) -> bool:
        try:
            n = await asyncio.wait_for(self.run_once(), self.cfg.lease_s)
            stats = await self.queue.stats()
        except (StoreUnavailable, TimeoutError, OSError) as e:
            WEBHOOK_STORE_ERRORS.inc()
            self.store_ok, self.last_error = False, f"{type(e).__name__}: {e}"[:300]
            log.warning("webhooks.store_unavailable", error=self.last_error)
            return False
        self.store_ok, self.last_error = True, None
        self.pending, self.oldest_pending_age_s = stats.pending, stats.oldest_pending_age_s
        WEBHOOK_QUEUE_DEPTH.set(stats.pending)
        WEBHOOK_OLDEST_PENDING_AGE.set(stats.oldest_pending_age_s)
        return n >= self.cfg.batch_size

    async def _attempt(self, c: Claimed) -> None:
        status, error = await self._send(c)
        self.attempted += 1
        attempt = c.attempts + 1
        dead = error is not None and attempt >= self.cfg.max_attempts
        nxt = (
            None
            if error is None or dead
            else self._clock() + backoff_s(self.cfg, attempt, self._rng)
        )
        kept = await self.queue.settle(
            c, self.owner, status=status, error=error, next_attempt_at=nxt, dead=dead
        )
        outcome = (
            "lease_lost"
            if not kept
            else "delivered"
            if error is None
            else "dead"
            if dead
            else "retry"
        )
        WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
        fields: dict[str, Any] = {
            "event_id": c.event_id,
            "endpoint_id": c.endpoint_id,
            "attempt": attempt,
            "status": status,
            "outcome": outcome,
        }
        if error is None:
            log.info("webhooks.delivered", **fields)
        else:
            log.warning("webhooks.attempt_failed", error=error, retry_at=nxt, **fields)

    async def _send(self, c: Claimed) -> tuple[int | None, str | None]:
        headers = signed_headers(c.secret, c.event_id, self._clock(), c.body)
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout_ms / 1000)
        try:
            async with self._client().post(
                c.url, data=c.body.encode(), headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    return resp.status, None
                return resp.status, f"HTTP {resp.status}"
        except TimeoutError:
            return None, "timeout"
        except aiohttp.ClientError as e:
            return None, type(e).__name__  # not str(e): it names the URL

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Close the HTTP client; idempotent."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def status(self) -> dict[str, object]:
        """What /readyz reports (delivery does not gate readiness: the Check never uses it)."""
        return {
            "store_ok": self.store_ok,
            "last_error": self.last_error,
            "pending": self.pending,
            "oldest_pending_age_s": round(self.oldest_pending_age_s, 3),
        }
