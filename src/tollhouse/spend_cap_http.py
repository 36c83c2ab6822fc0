"""The customer's own spend cap: ``GET/PUT/DELETE /v1/usage/spend-cap`` on the usage listener.

Routed by Envoy through ext_authz like ``/v1/usage``: the caller is the customer Envoy's Check
authenticated (``x-tollhouse-customer``, always overwritten upstream), with its own credential.
The cap is for the open period, in minor units of the plan's currency; the store audits every
change with the actor ``customer:<id>``. The Check refuses with 402 ``spend_cap_reached`` within
about a second of spend reaching it (``tollhouse.credits.spend_caps``).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tollhouse.logs import get_logger
from tollhouse.problems import problem_response
from tollhouse.store.models import ServiceError

__all__ = ["add_spend_cap_routes"]

log = get_logger(__name__)
CUSTOMER_HEADER = "x-tollhouse-customer"
PATH = "/v1/usage/spend-cap"


def add_spend_cap_routes(app: web.Application, service: Any, directory: Any, caps: Any) -> None:
    """Mount the routes; ``service``: a StoreService; ``caps``: the running SpendCaps."""

    def state(cid: str) -> dict[str, Any]:
        ent = directory.customer(cid)
        blocked = caps.blocked(cid) if caps is not None else None
        return {
            "customer": cid,
            "cap": None if ent is None else ent.spend_cap,
            "reached": blocked is not None,
            "spent": None if blocked is None else blocked.spent,
        }

    async def get(request: web.Request) -> web.Response:
        cid = request.headers.get(CUSTOMER_HEADER, "").strip()
        if not cid:
            return problem_response(401, "unauthenticated", "No authenticated customer")
        return web.json_response(state(cid), headers={"cache-control": "no-store"})

    async def put(request: web.Request) -> web.Response:
        return await _set(request, service, remove=False)

    async def delete(request: web.Request) -> web.Response:
        return await _set(request, service, remove=True)

    app.router.add_get(PATH, get)
    app.router.add_put(PATH, put)
    app.router.add_delete(PATH, delete)


async def _set(request: web.Request, service: Any, *, remove: bool) -> web.Response:
    cid = request.headers.get(CUSTOMER_HEADER, "").strip()
    if not cid:
        return problem_response(401, "unauthenticated", "No authenticated customer")
    amount: Any = None
    if not remove:
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            return problem_response(400, "invalid_json", "Bad request", "the body is not JSON")
        amount = body.get("amount") if isinstance(body, dict) else None
        if isinstance(amount, bool) or not isinstance(amount, int):
            return problem_response(
                400, "invalid", "Bad request", "amount: an integer of minor units is required"
            )
    try:
        cap = await service.set_spend_cap(cid, amount, actor=f"customer:{cid}")
    except ServiceError as e:
        status = 404 if e.code == "not_found" else 400
        return problem_response(
            status, e.code, "Bad request" if status == 400 else "Not found", e.detail
        )
    except Exception as e:  # the store is down: say so, never pretend it was saved
        log.error("spend_cap.store_failed", error=type(e).__name__, customer=cid)
        return problem_response(
            503, "store_unavailable", "Service unavailable", "the cap could not be saved; try again"
        )
    return web.json_response({"customer": cid, "cap": None if cap is None else cap.to_json()})
