"""The admin API's credit routes: grants, void, balance, auto-recharge rule and spend cap.

Added to the admin sub-app by :func:`tollhouse.admin.api.admin_routes`. Amounts are integer minor
units of the currency; consumption is shown rounded down to the minor unit (and exact, in 1/1000
minor units, as ``*_milli``). Every change is audited by the store (``credit.grant``,
``credit.void``, ``credit.recharge_rule``, ``spend_cap.set``).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from tollhouse.admin import validate as v
from tollhouse.store.credit_models import GRANT_SOURCES
from tollhouse.store.credit_service import MAX_AMOUNT
from tollhouse.store.credit_view import CurrencyOf, grant_json, load_credit_report
from tollhouse.store.models import ServiceError

__all__ = ["CURRENCY_KEY", "add_credit_routes"]

CURRENCY_KEY: web.AppKey[CurrencyOf | None] = web.AppKey("currency_of")
_CURRENCY = re.compile(r"[A-Z]{3}")
_SCOPE_KEYS = frozenset({"meters", "features"})


def _ids(scope: dict[str, Any], key: str) -> list[str]:
    vals = scope.get(key)
    if vals is None:
        return []
    if (
        not isinstance(vals, list)
        or len(vals) > 64
        or not all(isinstance(x, str) and v.check_id(x) for x in vals)
    ):
        raise ServiceError(
            "invalid", f"scope.{key}: must be a list of at most 64 names matching {v.ID.pattern}"
        )
    return vals


def _scope(b: dict[str, Any]) -> tuple[list[str], list[str]]:
    scope = b.get("scope")
    if scope is None:
        return [], []
    if not isinstance(scope, dict) or not set(scope) <= _SCOPE_KEYS:
        raise ServiceError("invalid", "scope: must be an object with meters and/or features")
    return _ids(scope, "meters"), _ids(scope, "features")


def _grant_args(b: dict[str, Any]) -> dict[str, Any]:
    currency = v.req_str(b, "currency", 3)
    if _CURRENCY.fullmatch(currency) is None:
        raise ServiceError("invalid", "currency: must be an ISO 4217 code such as USD")
    source = v.opt_str(b, "source", 32) or "purchase"
    if source not in GRANT_SOURCES:
        raise ServiceError("invalid", f"source: must be one of {', '.join(GRANT_SOURCES)}")
    priority = v.opt_int(b, "priority", 0, 1000)
    meters, features = _scope(b)
    return {
        "amount": v.req_int(b, "amount", 1, MAX_AMOUNT),
        "currency": currency,
        "priority": 10 if priority is None else priority,
        "source": source,
        "effective_at": v.opt_number(b, "effective_at"),
        "expires_at": v.opt_number(b, "expires_at"),
        "meters": meters,
        "features": features,
    }


async def grant_credit(request: web.Request) -> web.Response:
    """POST /customers/{customer}/credits: a grant of ``amount`` minor units of ``currency``."""
    from tollhouse.admin.api import ACTOR_KEY, _body, _ok, _path_id, _svc

    cid = _path_id(request, "customer")
    args = _grant_args(await _body(request))
    svc = _svc(request)
    g = await svc.grant_credit(cid, actor=request[ACTOR_KEY], **args)
    return _ok(grant_json(g, 0, svc.clock()), 201)


async def list_credits(request: web.Request) -> web.Response:
    """GET /customers/{customer}/credits: grants in consumption order, and the balance."""
    from tollhouse.admin.api import _ok, _path_id, _svc

    cid = _path_id(request, "customer")
    return _ok(await load_credit_report(_svc(request), cid, request.app[CURRENCY_KEY]))


async def credit_balance(request: web.Request) -> web.Response:
    """GET /customers/{customer}/credits/balance."""
    from tollhouse.admin.api import _ok, _path_id, _svc

    cid = _path_id(request, "customer")
    r = await load_credit_report(_svc(request), cid, request.app[CURRENCY_KEY])
    return _ok({"customer": cid, "at": r["at"], **r["balance"], "balances": r["balances"]})


async def void_grant(request: web.Request) -> web.Response:
    """POST /customers/{customer}/credits/{grant}/void: what is left of it is no longer usable."""
    from tollhouse.admin.api import ACTOR_KEY, _ok, _path_id, _svc

    cid, gid = _path_id(request, "customer"), _path_id(request, "grant")
    svc = _svc(request)
    g = await svc.void_grant(cid, gid, actor=request[ACTOR_KEY])
    return _ok(grant_json(g, (await svc.consumed(cid)).get(gid, 0), svc.clock()))


async def get_recharge(request: web.Request) -> web.Response:
    """GET /customers/{customer}/credits/recharge: ``{"customer", "rule"}`` (null: none)."""
    from tollhouse.admin.api import _ok, _path_id, _svc

    cid = _path_id(request, "customer")
    rule = await _svc(request).recharge_rule(cid)
    return _ok({"customer": cid, "rule": rule and rule.to_json()})


async def put_recharge(request: web.Request) -> web.Response:
    """PUT /customers/{customer}/credits/recharge: ``{"threshold", "target"}`` (minor units)."""
    from tollhouse.admin.api import ACTOR_KEY, _body, _ok, _path_id, _svc

    cid = _path_id(request, "customer")
    b = await _body(request)
    threshold = v.req_int(b, "threshold", 0, MAX_AMOUNT)
    target = v.req_int(b, "target", 1, MAX_AMOUNT)
    if target <= threshold:
        raise ServiceError("invalid", "target: must be greater than threshold")
    rule = await _svc(request).set_recharge_rule(cid, threshold, target, actor=request[ACTOR_KEY])
    return _ok({"customer": cid, "rule": rule and rule.to_json()})


async def delete_recharge(request: web.Request) -> web.Response:
    """DELETE /customers/{customer}/credits/recharge."""
    from tollhouse.admin.api import ACTOR_KEY, _ok, _path_id, _svc

    cid = _path_id(request, "customer")
    await _svc(request).set_recharge_rule(cid, None, actor=request[ACTOR_KEY])
    return _ok({"customer": cid, "rule": None})


async def get_spend_cap(request: web.Request) -> web.Response:
    """GET /customers/{customer}/spend-cap: the cap of the current period (null: none)."""
    from tollhouse.admin.api import _ok, _path_id, _svc

    cid = _path_id(request, "customer")
    cap = await _svc(request).spend_cap(cid)
    return _ok({"customer": cid, "spend_cap": cap and cap.to_json()})


async def put_spend_cap(request: web.Request) -> web.Response:
    """PUT /customers/{customer}/spend-cap: ``{"amount"}`` minor units for the current period."""
    from tollhouse.admin.api import ACTOR_KEY, _body, _ok, _path_id, _svc

    cid = _path_id(request, "customer")
    amount = v.req_int(await _body(request), "amount", 0, MAX_AMOUNT)
    cap = await _svc(request).set_spend_cap(cid, amount, actor=request[ACTOR_KEY])
    return _ok({"customer": cid, "spend_cap": cap and cap.to_json()})


async def delete_spend_cap(request: web.Request) -> web.Response:
    """DELETE /customers/{customer}/spend-cap: no cap for the current period."""
    from tollhouse.admin.api import ACTOR_KEY, _ok, _path_id, _svc

    cid = _path_id(request, "customer")
    await _svc(request).set_spend_cap(cid, None, actor=request[ACTOR_KEY])
    return _ok({"customer": cid, "spend_cap": None})


def add_credit_routes(app: web.Application, currency_of: CurrencyOf | None = None) -> None:
    """Add the credit routes; ``currency_of(plan)`` names the balance's currency (None: grants')."""
    app[CURRENCY_KEY] = currency_of
    r = app.router
    base = "/customers/{customer}"
    r.add_get(base + "/credits", list_credits)
    r.add_post(base + "/credits", grant_credit)
    r.add_get(base + "/credits/balance", credit_balance)
    r.add_post(base + "/credits/{grant}/void", void_grant)
    r.add_get(base + "/credits/recharge", get_recharge)
    r.add_put(base + "/credits/recharge", put_recharge)
    r.add_delete(base + "/credits/recharge", delete_recharge)
    r.add_get(base + "/spend-cap", get_spend_cap)
    r.add_put(base + "/spend-cap", put_spend_cap)
    r.add_delete(base + "/spend-cap", delete_spend_cap)
