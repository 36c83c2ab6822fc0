"""Signed webhooks from a durable outbox in the store: endpoints, events, delivery."""

from tollhouse.webhooks.delivery import Deliverer, backoff_s, signed_headers
from tollhouse.webhooks.models import EVENT_TYPES, Delivery, EmitEvent, Endpoint, Event
from tollhouse.webhooks.outbox import Outbox, new_secret
from tollhouse.webhooks.queue import DeliveryQueue, QueueStats

__all__ = [
    "EVENT_TYPES",
    "Deliverer",
    "Delivery",
    "DeliveryQueue",
    "EmitEvent",
    "Endpoint",
    "Event",
    "Outbox",
    "QueueStats",
    "backoff_s",
    "new_secret",
    "signed_headers",
]
