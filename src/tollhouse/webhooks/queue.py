"""Claiming and settling deliveries: a lease per delivery, exclusive across replicas.

A claim sets ``lease_owner`` / ``lease_until`` on due, unleased pending deliveries in one
statement (SQLite: inside ``BEGIN IMMEDIATE``, one writer at a time; PostgreSQL: the candidate
rows are locked ``FOR UPDATE SKIP LOCKED``, so two replicas never claim the same row). A claim
whose holder dies expires and is claimed again: delivery is at least once, same ``webhook-id``.
Settling is fenced on the owner: a loop that lost its lease cannot overwrite the new holder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tollhouse.store.backend import Backend
from tollhouse.webhooks.models import Claimed

__all__ = ["DeliveryQueue", "QueueStats"]

_DUE = """SELECT d.id FROM webhook_deliveries d
    JOIN webhook_endpoints e ON e.id = d.endpoint_id
    WHERE d.state = 'pending' AND d.next_attempt_at <= ? AND e.enabled = 1
      AND e.deleted_at IS NULL AND (d.lease_until IS NULL OR d.lease_until <= ?)
    ORDER BY d.next_attempt_at, d.id LIMIT ?"""

_CLAIMED = """SELECT d.id, d.attempts, v.id, v.payload, e.id, e.url, e.secret
    FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event_id
    JOIN webhook_endpoints e ON e.id = d.endpoint_id"""


@dataclass(frozen=True)
class QueueStats:
    """What /metrics and /readyz report of the queue."""

    pending: int
    oldest_pending_age_s: float
    dead: int


class DeliveryQueue:
    """The claim / settle side of the outbox."""

    def __init__(self, backend: Backend, *, clock: Callable[[], float]) -> None:
        self.backend = backend
        self._clock = clock

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries to ``owner`` for ``lease_s`` seconds."""
        now = self._clock()
        lock = " FOR UPDATE OF d SKIP LOCKED" if self.backend.dialect == "postgresql" else ""
        async with self.backend.transaction() as tx:
            sql = f"UPDATE webhook_deliveries SET lease_owner = ?, lease_until = ? WHERE id IN ({_DUE}{lock}) RETURNING id"  # noqa: E501, S608 - constant SQL pieces
            ids = await tx.execute(sql, (owner, now + lease_s, now, now, limit))
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            sql = f"{_CLAIMED} WHERE d.id IN ({marks}) ORDER BY d.next_attempt_at, d.id"
            rows = await tx.execute(sql, [int(r[0]) for r in ids])
        return [Claimed(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows]

    async def settle(
        self,
        claimed: Claimed,
        owner: str,
        *,
        status: int | None,
        error: str | None,
        next_attempt_at: float | None,
        dead: bool,
    ) -> bool:
        """Record an attempt's outcome; False if ``owner`` no longer holds the lease.

        Delivered: ``error`` is None and not ``dead``; retry: ``next_attempt_at``; dead: ``dead``.
        """
        now = self._clock()
        state = "dead" if dead else ("delivered" if error is None else "pending")
        async with self.backend.transaction() as tx:
            rows = await tx.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1,"
                " last_status = ?, last_error = ?, last_attempt_at = ?,"
                " delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END,"
                " next_attempt_at = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE id = ? AND lease_owner = ? AND state = 'pending' RETURNING id",
                (
                    state,
                    status,
                    error,
                    now,
                    state,
                    now,
                    next_attempt_at if next_attempt_at is not None else now,
                    claimed.delivery_id,
                    owner,
                ),
            )
        return bool(rows)

    async def stats(self) -> QueueStats:
        """Pending deliveries (enabled endpoints), the oldest one's age, dead ones."""
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.execute(
                "SELECT count(*), min(d.created_at) FROM webhook_deliveries d"
                " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
                " WHERE d.state = 'pending' AND e.enabled = 1 AND e.deleted_at IS NULL"
            )
            dead = await tx.execute("SELECT count(*) FROM webhook_deliveries WHERE state = 'dead'")
        pending, oldest = int(rows[0][0]), rows[0][1]
        age = max(0.0, self._clock() - float(oldest)) if oldest is not None else 0.0
        return QueueStats(pending, age, int(dead[0][0]))
