"""The admin API's webhook routes: endpoints, test deliveries, deliveries and redelivery.

Added to the admin sub-app by :func:`tollhouse.admin.api.admin_routes`. A secret is returned
once, by the create call; it is never listed, logged or written to the audit log.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tollhouse.admin import validate as v
from tollhouse.store.models import ServiceError
from tollhouse.webhooks.outbox import Outbox

__all__ = ["OUTBOX_KEY", "add_webhook_routes"]

OUTBOX_KEY: web.AppKey[Outbox] = web.AppKey("outbox", Outbox)


def _box(request: web.Request) -> Outbox:
    return request.app[OUTBOX_KEY]


def _events(b: dict[str, Any]) -> list[str]:
    events = b.get("events", ["*"])
    if (
        not isinstance(events, list)
        or not 1 <= len(events) <= 32
        or not all(isinstance(e, str) and 0 < len(e) <= 64 for e in events)
    ):
        raise ServiceError("invalid", 'events: a list of 1 to 32 event types (or "*")')
    return events


async def create_webhook(request: web.Request) -> web.Response:
    """POST /webhooks: url, events (default every type), secret (default generated)."""
    from tollhouse.admin.api import ACTOR_KEY, _body, _ok

    b = await _body(request)
    ep, secret = await _box(request).create_endpoint(
        actor=request[ACTOR_KEY],
        url=v.req_str(b, "url", 2048),
        events=_events(b),
        secret=v.opt_str(b, "secret", 200),
    )
    return _ok({**ep.to_json(), "secret": secret}, 201)


async def list_webhooks(request: web.Request) -> web.Response:
    """GET /webhooks."""
    from tollhouse.admin.api import _ok

    return _ok({"items": [e.to_json() for e in await _box(request).list_endpoints()]})


async def get_webhook(request: web.Request) -> web.Response:
    """GET /webhooks/{webhook}."""
    from tollhouse.admin.api import _ok, _path_id

    return _ok((await _box(request).get_endpoint(_path_id(request, "webhook"))).to_json())


async def delete_webhook(request: web.Request) -> web.Response:
    """DELETE /webhooks/{webhook}: its pending deliveries become dead."""
    from tollhouse.admin.api import ACTOR_KEY, _ok, _path_id

    ep = await _box(request).delete_endpoint(_path_id(request, "webhook"), actor=request[ACTOR_KEY])
    return _ok(ep.to_json())


def _set_enabled(enabled: bool) -> Any:
    async def handler(request: web.Request) -> web.Response:
        from tollhouse.admin.api import ACTOR_KEY, _ok, _path_id

        ep = await _box(request).set_enabled(
            _path_id(request, "webhook"), enabled, actor=request[ACTOR_KEY]
        )
        return _ok(ep.to_json())

    return handler


async def test_webhook(request: web.Request) -> web.Response:
    """POST /webhooks/{webhook}/test: queue a signed ``webhook.test`` event to this endpoint."""
    from tollhouse.admin.api import ACTOR_KEY, _ok, _path_id

    event = await _box(request).send_test(_path_id(request, "webhook"), actor=request[ACTOR_KEY])
    return _ok(event.to_json(), 202)


async def list_deliveries(request: web.Request) -> web.Response:
    """GET /webhooks/{webhook}/deliveries?state=&limit=."""
    from tollhouse.admin.api import _ok, _path_id, _q_int

    box = _box(request)
    ep = await box.get_endpoint(_path_id(request, "webhook"))
    items = await box.list_deliveries(
        endpoint_id=ep.id,
        state=request.query.get("state"),
        limit=_q_int(request, "limit", 100, 1, 1000),
    )
    return _ok({"items": [d.to_json() for d in items]})


async def redeliver_dead(request: web.Request) -> web.Response:
    """POST /webhooks/{webhook}/redeliver: every dead delivery of this endpoint, again."""
    from tollhouse.admin.api import ACTOR_KEY, _ok, _path_id

    n = await _box(request).redeliver_dead(_path_id(request, "webhook"), actor=request[ACTOR_KEY])
    return _ok({"requeued": n})


async def get_event(request: web.Request) -> web.Response:
    """GET /webhook-events/{event}: the event and its deliveries."""
    from tollhouse.admin.api import _ok, _path_id

    box = _box(request)
    event = await box.get_event(_path_id(request, "event"))
    items = await box.list_deliveries(event_id=event.id)
    return _ok({**event.to_json(), "deliveries": [d.to_json() for d in items]})


async def redeliver_event(request: web.Request) -> web.Response:
    """POST /webhook-events/{event}/redeliver: send the event again to each of its endpoints."""
    from tollhouse.admin.api import ACTOR_KEY, _ok, _path_id

    items = await _box(request).redeliver_event(
        _path_id(request, "event"), actor=request[ACTOR_KEY]
    )
    return _ok({"items": [d.to_json() for d in items]})


def add_webhook_routes(app: web.Application, outbox: Outbox) -> None:
    """Add the webhook routes to the admin sub-app."""
    app[OUTBOX_KEY] = outbox
    r = app.router
    r.add_get("/webhooks", list_webhooks)
    r.add_post("/webhooks", create_webhook)
    r.add_get("/webhooks/{webhook}", get_webhook)
    r.add_delete("/webhooks/{webhook}", delete_webhook)
    r.add_post("/webhooks/{webhook}/disable", _set_enabled(False))
    r.add_post("/webhooks/{webhook}/enable", _set_enabled(True))
    r.add_post("/webhooks/{webhook}/test", test_webhook)
    r.add_get("/webhooks/{webhook}/deliveries", list_deliveries)
    r.add_post("/webhooks/{webhook}/redeliver", redeliver_dead)
    r.add_get("/webhook-events/{event}", get_event)
    r.add_post("/webhook-events/{event}/redeliver", redeliver_event)
