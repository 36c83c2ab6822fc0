"""The durable outbox in the store: endpoints, events (unique dedupe key) and their deliveries.

Recording an event and creating its deliveries (one per subscribed, enabled endpoint) is one
transaction, so an event is never recorded without its deliveries. Every admin change writes an
``audit_log`` row (never the secret).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from tollhouse.logs import get_logger
from tollhouse.store.backend import Backend, Row, Tx
from tollhouse.store.models import ServiceError
from tollhouse.webhooks.metrics import WEBHOOK_EVENTS
from tollhouse.webhooks.models import (
    EVENT_TYPE_RE,
    EVENT_TYPES,
    STATES,
    TEST_EVENT,
    Delivery,
    Endpoint,
    Event,
    event_body,
)

__all__ = ["Outbox", "new_secret"]

log = get_logger(__name__)
_ENDPOINT_SQL = "SELECT id, url, events, enabled, created_at FROM webhook_endpoints"
_EVENT_SQL = "SELECT id, type, customer, dedupe_key, payload, occurred_at FROM webhook_events"
_DELIVERY_SQL = (
    "SELECT id, event_id, endpoint_id, state, attempts, next_attempt_at, last_status,"
    " last_error, last_attempt_at, delivered_at FROM webhook_deliveries"
)


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form ``whsec_<base64 of 32 bytes>``."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _check_secret(secret: str) -> str:
    raw = secret[len("whsec_") :] if secret.startswith("whsec_") else None
    try:
        size = len(base64.b64decode(raw, validate=True)) if raw else 0
    except (binascii.Error, ValueError):
        size = 0
    if not 24 <= size <= 64:
        raise ServiceError("invalid", "secret: must be whsec_ + base64 of 24 to 64 bytes")
    return secret


def _check_url(url: str) -> str:
    parts = urlsplit(url) if isinstance(url, str) and len(url) <= 2048 else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServiceError("invalid", "url: must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ServiceError("invalid", "url: must not carry credentials (sign with the secret)")
    return url


def _check_events(events: Sequence[str]) -> tuple[str, ...]:
    if not events or not all(isinstance(e, str) for e in events):
        raise ServiceError("invalid", 'events: a non-empty list of event types (or "*")')
    unknown = [e for e in events if e != "*" and e not in EVENT_TYPES]
    if unknown:
        raise ServiceError(
            "invalid", f"events: unknown type {unknown[0]!r}; known: " + ", ".join(EVENT_TYPES)
        )
    return tuple(dict.fromkeys(events))


def _endpoint(r: Row) -> Endpoint:
    return Endpoint(r[0], r[1], tuple(json.loads(r[2])), bool(r[3]), float(r[4]))


def _event(r: Row) -> Event:
    return Event(r[0], r[1], r[2], r[3], r[4], float(r[5]))


def _delivery(r: Row) -> Delivery:
    return Delivery(int(r[0]), r[1], r[2], r[3], int(r[4]), float(r[5]), r[6], r[7], r[8], r[9])


class Outbox:
    """Endpoints, events and deliveries on the store's backend (SQLite or PostgreSQL)."""

    def __init__(
        self, backend: Backend, *, clock: Callable[[], float], emit_deadline_s: float = 2.0
    ) -> None:
        self.backend = backend
        self._clock = clock
        self._deadline_s = emit_deadline_s

    # --- events ------------------------------------------------------------------------------

    async def emit(
        self, event_type: str, customer_id: str | None, dedupe_key: str, data: Mapping[str, object]
    ) -> bool:
        """Record an event and its deliveries; False if ``dedupe_key`` was already recorded.

        The :data:`~tollhouse.webhooks.models.EmitEvent` the alert evaluators call; bounded by the
        emit deadline (``TimeoutError`` past it: nothing was recorded).
        """
        if not EVENT_TYPE_RE.match(event_type) or not dedupe_key or len(dedupe_key) > 512:
            raise ServiceError("invalid", "event type must be dotted lowercase, dedupe_key 1-512")
        event = await asyncio.wait_for(
            self._record(event_type, customer_id, dedupe_key, data, None), self._deadline_s
        )
        WEBHOOK_EVENTS.labels(type=event_type, result="recorded" if event else "duplicate").inc()
        return event is not None

    async def send_test(self, endpoint_id: str, *, actor: str) -> Event:
        """Queue a ``webhook.test`` event for this endpoint only (even if it filters it out)."""
        async with self.backend.transaction(readonly=True) as tx:
            ep = await self._get(tx, endpoint_id)
        if not ep.enabled:
            raise ServiceError("conflict", f"webhook {endpoint_id!r} is disabled")
        key = f"{TEST_EVENT}:{endpoint_id}:{secrets.token_hex(8)}"
        data = {"endpoint_id": endpoint_id, "message": "a test delivery from tollhouse"}
        event = await asyncio.wait_for(
            self._record(TEST_EVENT, None, key, data, endpoint_id, actor=actor), self._deadline_s
        )
        assert event is not None  # a fresh random key
        return event

    async def _record(
        self,
        event_type: str,
        customer: str | None,
        dedupe_key: str,
        data: Mapping[str, object],
        only: str | None,
        actor: str | None = None,
    ) -> Event | None:
        now = self._clock()
        eid = "evt_" + secrets.token_hex(12)
        body = event_body(eid, event_type, customer, now, data)
        async with self.backend.transaction() as tx:
            rows = await tx.execute(
                "INSERT INTO webhook_events (id, type, customer, dedupe_key, payload, occurred_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                (eid, event_type, customer, dedupe_key, body, now),
            )
            if not rows:
                return None
            endpoints = [
                _endpoint(r)
                for r in await tx.execute(
                    _ENDPOINT_SQL + " WHERE enabled = 1 AND deleted_at IS NULL"
                )
            ]
            for ep in endpoints:
                if ep.id == only or (only is None and ep.wants(event_type)):
                    await tx.execute(
                        "INSERT INTO webhook_deliveries (event_id, endpoint_id, state, attempts,"
                        " next_attempt_at, created_at) VALUES (?, ?, 'pending', 0, ?, ?)",
                        (eid, ep.id, now, now),
                    )
            if actor is not None:
                await self._audit(tx, actor, "webhook.test", only or eid, None, {"event": eid})
        log.info("webhooks.event_recorded", event_id=eid, type=event_type, customer=customer)
        return Event(eid, event_type, customer, dedupe_key, body, now)

    async def get_event(self, event_id: str) -> Event:
        """Return one event, or raise ``not_found``."""
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.execute(_EVENT_SQL + " WHERE id = ?", (event_id,))
        if not rows:
            raise ServiceError("not_found", f"no event {event_id!r}")
        return _event(rows[0])

    # --- endpoints ---------------------------------------------------------------------------

    async def create_endpoint(
        self, *, actor: str, url: str, events: Sequence[str], secret: str | None = None
    ) -> tuple[Endpoint, str]:
        """Register an endpoint; return it and its secret (the only time the secret is shown)."""
        secret = _check_secret(secret) if secret is not None else new_secret()
        ep = Endpoint(
            "wh_" + secrets.token_hex(8),
            _check_url(url),
            _check_events(events),
            True,
            self._clock(),
        )
        async with self.backend.transaction() as tx:
            await tx.execute(
                "INSERT INTO webhook_endpoints (id, url, events, secret, enabled, created_at)"
                " VALUES (?, ?, ?, ?, 1, ?)",
                (ep.id, ep.url, json.dumps(list(ep.events)), secret, ep.created_at),
            )
            await self._audit(tx, actor, "webhook.create", ep.id, None, ep.to_json())
        return ep, secret

    async def list_endpoints(self) -> list[Endpoint]:
        """Every endpoint not deleted, oldest first."""
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.execute(
                _ENDPOINT_SQL + " WHERE deleted_at IS NULL ORDER BY created_at, id"
            )
        return [_endpoint(r) for r in rows]

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        """One endpoint, or ``not_found``."""
        async with self.backend.transaction(readonly=True) as tx:
            return await self._get(tx, endpoint_id)

    async def set_enabled(self, endpoint_id: str, enabled: bool, *, actor: str) -> Endpoint:
        """Disable (deliveries wait, pending) or enable an endpoint."""
        async with self.backend.transaction() as tx:
            before = await self._get(tx, endpoint_id)
            await tx.execute(
                "UPDATE webhook_endpoints SET enabled = ? WHERE id = ?", (int(enabled), endpoint_id)
            )
            after = await self._get(tx, endpoint_id)
            await self._audit(
                tx,
                actor,
                "webhook.enable" if enabled else "webhook.disable",
                endpoint_id,
                before.to_json(),
                after.to_json(),
            )
        return after

    async def delete_endpoint(self, endpoint_id: str, *, actor: str) -> Endpoint:
        """Delete an endpoint; its pending deliveries become dead (``endpoint deleted``)."""
        async with self.backend.transaction() as tx:
            before = await self._get(tx, endpoint_id)
            now = self._clock()
            await tx.execute(
                "UPDATE webhook_endpoints SET deleted_at = ?, enabled = 0 WHERE id = ?",
                (now, endpoint_id),
            )
            await tx.execute(
                "UPDATE webhook_deliveries SET state = 'dead', last_error = 'endpoint deleted',"
                " lease_owner = NULL, lease_until = NULL"
                " WHERE endpoint_id = ? AND state = 'pending'",
                (endpoint_id,),
            )
            await self._audit(tx, actor, "webhook.delete", endpoint_id, before.to_json(), None)
        return before

    # --- deliveries --------------------------------------------------------------------------

    async def list_deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        event_id: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries, newest first, filtered by endpoint, event and state."""
        if state is not None and state not in STATES:
            raise ServiceError("invalid", "state must be one of " + ", ".join(STATES))
        where, params = ["1 = 1"], []
        for col, val in (("endpoint_id", endpoint_id), ("event_id", event_id), ("state", state)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.execute(
                f"{_DELIVERY_SQL} WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                [*params, max(1, min(limit, 1000))],
            )
        return [_delivery(r) for r in rows]

    async def redeliver_event(self, event_id: str, *, actor: str) -> list[Delivery]:
        """Send an event again to each endpoint it was for (attempts start again from 0)."""
        async with self.backend.transaction() as tx:
            if not await tx.execute("SELECT 1 FROM webhook_events WHERE id = ?", (event_id,)):
                raise ServiceError("not_found", f"no event {event_id!r}")
            await tx.execute(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0,"
                " next_attempt_at = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE event_id = ? AND endpoint_id IN"
                " (SELECT id FROM webhook_endpoints WHERE deleted_at IS NULL)",
                (self._clock(), event_id),
            )
            rows = await tx.execute(_DELIVERY_SQL + " WHERE event_id = ? ORDER BY id", (event_id,))
            await self._audit(
                tx,
                actor,
                "webhook.redeliver",
                event_id,
                None,
                {"deliveries": [int(r[0]) for r in rows]},
            )
        return [_delivery(r) for r in rows]

    async def redeliver_dead(self, endpoint_id: str, *, actor: str) -> int:
        """Put every dead delivery of an endpoint back in the queue; return how many."""
        async with self.backend.transaction() as tx:
            ep = await self._get(tx, endpoint_id)
            rows = await tx.execute(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?"
                " WHERE endpoint_id = ? AND state = 'dead' RETURNING id",
                (self._clock(), ep.id),
            )
            await self._audit(
                tx, actor, "webhook.redeliver_dead", endpoint_id, None, {"deliveries": len(rows)}
            )
        return len(rows)

    # --- internals ---------------------------------------------------------------------------

    async def _get(self, tx: Tx, endpoint_id: str) -> Endpoint:
        rows = await tx.execute(
            _ENDPOINT_SQL + " WHERE id = ? AND deleted_at IS NULL", (endpoint_id,)
        )
        if not rows:
            raise ServiceError("not_found", f"no webhook {endpoint_id!r}")
        return _endpoint(rows[0])

    async def _audit(
        self, tx: Tx, actor: str, action: str, target: str, before: Any, after: Any
    ) -> None:
        await tx.execute(
            "INSERT INTO audit_log (actor, action, target, before, after, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                actor,
                action,
                target,
                None if before is None else json.dumps(before, sort_keys=True),
                None if after is None else json.dumps(after, sort_keys=True),
                self._clock(),
            ),
        )
        log.info("webhooks.changed", actor=actor, action=action, target=target)
