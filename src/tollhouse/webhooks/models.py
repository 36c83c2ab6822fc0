"""Values of the webhook outbox: endpoints, events, deliveries, and the emit callable's shape."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "EVENT_TYPES",
    "TEST_EVENT",
    "Claimed",
    "Delivery",
    "EmitEvent",
    "Endpoint",
    "Event",
    "State",
    "event_body",
]

#: emit(event_type, customer_id, dedupe_key, data) -> True if newly recorded, False if the
#: dedupe_key was already recorded (at most once per key, across replicas).
EmitEvent = Callable[[str, str | None, str, Mapping[str, object]], Awaitable[bool]]

TEST_EVENT = "webhook.test"
EVENT_TYPES = (
    "quota.threshold_reached",
    "quota.threshold_recovered",
    "credit.low",
    "credit.exhausted",
    "credit.recharge_requested",
    "spend_cap.reached",
    "spend.threshold_reached",
    "invoice.issued",
    "usage.unattributed",
    TEST_EVENT,
)
EVENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
State = Literal["pending", "delivered", "dead"]
STATES: tuple[State, ...] = ("pending", "delivered", "dead")


def event_body(
    event_id: str,
    event_type: str,
    customer: str | None,
    occurred_at: float,
    data: Mapping[str, object],
) -> str:
    """The JSON body sent (and signed) for an event: stored once, so every retry is identical."""
    return json.dumps(
        {
            "id": event_id,
            "type": event_type,
            "customer": customer,
            "timestamp": datetime.fromtimestamp(occurred_at, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
            "data": dict(data),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class Endpoint:
    """A registered receiver; ``events`` filters types (``*``: all). Never holds the secret."""

    id: str
    url: str
    events: tuple[str, ...]
    enabled: bool
    created_at: float

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint subscribes to ``event_type``."""
        return "*" in self.events or event_type in self.events

    def to_json(self) -> dict[str, Any]:
        """The API representation (no secret)."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "enabled": self.enabled,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Event:
    """One recorded event; ``id`` is the ``webhook-id`` of every delivery of it."""

    id: str
    type: str
    customer: str | None
    dedupe_key: str
    body: str
    occurred_at: float

    def to_json(self) -> dict[str, Any]:
        """The API representation: the body as sent, plus the dedupe key."""
        return {
            "id": self.id,
            "type": self.type,
            "customer": self.customer,
            "dedupe_key": self.dedupe_key,
            "occurred_at": self.occurred_at,
            "payload": json.loads(self.body),
        }


@dataclass(frozen=True)
class Delivery:
    """One event to one endpoint, and where it stands."""

    id: int
    event_id: str
    endpoint_id: str
    state: State
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    last_attempt_at: float | None
    delivered_at: float | None

    def to_json(self) -> dict[str, Any]:
        """The API representation."""
        return {
            "id": self.id,
            "event_id": self.event_id,
            "endpoint_id": self.endpoint_id,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_attempt_at": self.last_attempt_at,
            "delivered_at": self.delivered_at,
        }


@dataclass(frozen=True)
class Claimed:
    """A delivery this loop holds the lease of, with what it needs to send it."""

    delivery_id: int
    attempts: int
    event_id: str
    body: str
    endpoint_id: str
    url: str
    secret: str

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"Claimed(delivery_id={self.delivery_id}, event_id={self.event_id!r})"
