"""/admin/webhooks over real HTTP: register, test delivery to a real receiver, redeliver."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.support.admin import Admin, admin
from tests.support.webhooks import FAST, running
from tests.webhook_receiver import Receiver
from tollhouse.store import open_store
from tollhouse.webhooks import Deliverer, DeliveryQueue

__all__ = ["admin"]


async def _delivered(a: Admin, webhook: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        status, _, body = await a.call("GET", f"/webhooks/{webhook}/deliveries?state=delivered")
        assert status == 200
        items: list[dict[str, Any]] = body["items"]  # type: ignore[index]
        if len(items) >= n:
            return items
        assert time.monotonic() < deadline, "not delivered in time"
        await _pause()


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.05)


async def test_register_test_delivery_signed_and_redeliver(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    """POST /webhooks returns the secret once; /test arrives signed; redelivery repeats its id.

    List and get never show the secret, nor does the audit log or any log line.
    """
    caplog.set_level(logging.DEBUG, logger="tollhouse")
    rx = await Receiver().start()
    status, _, created = await admin.call(
        "POST", "/webhooks", {"url": rx.url, "events": ["invoice.issued"]}
    )
    assert status == 201
    assert isinstance(created, dict)
    wid, secret = created["id"], created["secret"]
    status, _, listed = await admin.call("GET", "/webhooks")
    assert status == 200
    assert secret not in str(listed)
    status, _, event = await admin.call("POST", f"/webhooks/{wid}/test")
    assert status == 202
    assert isinstance(event, dict)
    backend = await open_store(admin.store_url)
    d = Deliverer(
        DeliveryQueue(backend, clock=time.time),
        FAST,
        owner="t",
        clock=time.time,
        rng=random.Random(1),
    )
    try:
        async with running(d):
            await _delivered(admin, wid, 1)
            status, _, again = await admin.call("POST", f"/webhook-events/{event['id']}/redeliver")
            assert status == 200
            assert [x["state"] for x in again["items"]] == ["pending"]  # type: ignore[index]
            deadline = time.monotonic() + 20
            while len(rx.seen) < 2:
                assert time.monotonic() < deadline
                await _pause()
    finally:
        await rx.stop()
        await backend.close()
    assert rx.ids() == [event["id"], event["id"]]
    payload = Webhook(secret).verify(rx.seen[0].body, rx.seen[0].headers)
    assert payload["type"] == "webhook.test"
    status, _, got = await admin.call("GET", f"/webhook-events/{event['id']}")
    assert status == 200
    assert got["deliveries"][0]["state"] == "delivered"  # type: ignore[index]
    assert secret not in caplog.text
    status, _, audit = await admin.call("GET", f"/audit?target={wid}")
    assert [e["action"] for e in audit["items"]] == ["webhook.create", "webhook.test"]  # type: ignore[index]
    assert secret not in str(audit)


async def test_webhook_errors_are_problems(admin: Admin) -> None:
    """Bad input is 422 naming the field, unknown ids 404, a disabled endpoint's test 409."""
    status, _, body = await admin.call("POST", "/webhooks", {"url": "ftp://x", "events": ["*"]})
    assert (status, body["code"]) == (422, "invalid")  # type: ignore[index]
    assert body["detail"].startswith("url")  # type: ignore[index]
    status, _, body = await admin.call(
        "POST", "/webhooks", {"url": "https://x.test", "events": ["nope.nope"]}
    )
    assert (status, body["detail"][:6]) == (422, "events")  # type: ignore[index]
    for method, path in [
        ("GET", "/webhooks/wh_none"),
        ("POST", "/webhooks/wh_none/test"),
        ("DELETE", "/webhooks/wh_none"),
        ("GET", "/webhook-events/evt_x"),
        ("POST", "/webhook-events/evt_x/redeliver"),
    ]:
        status, _, body = await admin.call(method, path)
        assert (status, body["code"]) == (404, "not_found")  # type: ignore[index]
    _, _, created = await admin.call("POST", "/webhooks", {"url": "https://x.test/h"})
    wid = created["id"]  # type: ignore[index]
    status, _, body = await admin.call("POST", f"/webhooks/{wid}/disable")
    assert (status, body["enabled"]) == (200, False)  # type: ignore[index]
    status, _, body = await admin.call("POST", f"/webhooks/{wid}/test")
    assert (status, body["code"]) == (409, "conflict")  # type: ignore[index]
    status, _, body = await admin.call("GET", f"/webhooks/{wid}/deliveries?state=bogus")
    assert status == 422
