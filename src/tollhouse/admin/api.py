"""The admin API: JSON over HTTP for customers, subscriptions, keys, top-ups, credits, audit.

Mounted by the server at ``/admin`` on the admin listener (``app.add_subapp("/admin", ...)``).
Every request needs ``Authorization: Bearer <admin token>``; the token's SHA-256 is compared in
constant time. Errors are ``application/problem+json`` with a stable ``code``. Described by
``openapi.yaml`` next to this module.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from tollhouse.admin import validate as v
from tollhouse.admin.metrics import ADMIN_REQUESTS
from tollhouse.config import Config
from tollhouse.logs import get_logger
from tollhouse.problems import problem_response
from tollhouse.store.backend import StoreUnavailable, connect_backend
from tollhouse.store.models import ServiceError
from tollhouse.store.service import INTEGRITY_ERRORS, StoreService

__all__ = ["OPENAPI_PATH", "admin_routes", "build_admin_app", "read_token_sha256"]

log = get_logger(__name__)
OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
SERVICE_KEY: web.AppKey[StoreService] = web.AppKey("service", StoreService)
ACTOR_KEY: web.RequestKey[str] = web.RequestKey("actor", str)
_STATUS = {
    "not_found": 404,
    "already_exists": 409,
    "already_revoked": 409,
    "already_voided": 409,
    "conflict": 409,
    "effective_at_too_early": 409,
    "invalid": 422,
    "unknown_plan": 422,
    "unknown_meter": 422,
    "bad_json": 400,
    "unauthorized": 401,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "store_unavailable": 503,
    "internal_error": 500,
}
_TITLES = {
    404: "Not found",
    409: "Conflict",
    422: "Invalid request",
    400: "Bad request",
    401: "Unauthorized",
    405: "Method not allowed",
    413: "Content too large",
    503: "Store unavailable",
    500: "Internal error",
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
_DIGITS = re.compile(r"[0-9]{1,19}")  # str.isdigit() also takes "²" and "٣", which int() refuses
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def read_token_sha256(path: Path) -> str:
    """Return the SHA-256 hex of the admin token stored in ``path`` (surrounding space ignored)."""
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"{path}: the admin token file is empty")
    return hashlib.sha256(token.encode()).hexdigest()


def problem(
    code: str, detail: str = "", status: int | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """Return an RFC 9457 problem+json response with a stable ``code``."""
    status = status or _STATUS.get(code, 500)
    return problem_response(status, code, _TITLES.get(status, "Error"), detail, headers)


def _ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _auth_middleware(token_sha256: str) -> Any:
    expected = token_sha256.lower().encode()
    actor = "admin:" + token_sha256.lower()[:12]

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        given = hashlib.sha256(token.strip().encode()).hexdigest().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
            log.warning(
                "admin.unauthorized",
                method=request.method,
                path=request.path,
                had_credentials=bool(header),
            )
            return problem(
                "unauthorized",
                "a valid admin bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="tollhouse-admin"'},
            )
        request[ACTOR_KEY] = actor
        return await handler(request)

    return auth


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except ServiceError as e:
        resp = problem(e.code, e.detail)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = problem(_HTTP_CODES.get(e.status, "bad_request"), e.reason, status=e.status)
        resp.headers.update({k: v for k, v in e.headers.items() if k.lower() == "allow"})
    except StoreUnavailable:
        log.warning("admin.store_unavailable", exc=True, path=request.path)
        resp = problem(
            "store_unavailable",
            "the entitlement store is unreachable",
            headers={"Retry-After": "1"},
        )
    except INTEGRITY_ERRORS:
        resp = problem("conflict", "a concurrent change conflicts; retry")
    except Exception:  # a bug: never a bare 500 text/plain, always logged with its traceback
        log.error("admin.internal_error", exc=True, method=request.method, path=request.path)
        resp = problem("internal_error", "the request failed; see the tollhouse log")
    route = request.match_info.route.resource
    ADMIN_REQUESTS.labels(
        route=route.canonical if route else "unmatched", status=str(resp.status)
    ).inc()
    return resp


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json() if request.can_read_body else {}
    except (ValueError, UnicodeDecodeError):
        raise ServiceError("bad_json", "the body must be a JSON object") from None
    except RecursionError:  # json refuses nesting deeper than the interpreter's stack
        raise ServiceError("bad_json", "the body nests too deeply") from None
    if not isinstance(data, dict):
        raise ServiceError("bad_json", "the body must be a JSON object")
    return data


def _path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not v.check_id(value):
        raise ServiceError("not_found", f"no such {name}")
    return value


def _svc(request: web.Request) -> StoreService:
    return request.app[SERVICE_KEY]


def _q_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if _DIGITS.fullmatch(raw) is None or not lo <= int(raw) <= hi:
        raise ServiceError("invalid", f"{name} must be an integer from {lo} to {hi}")
    return int(raw)


# --- customers -----------------------------------------------------------------------------


async def list_customers(request: web.Request) -> web.Response:
    """GET /customers?after=&limit=."""
    after = request.query.get("after")
    if after is not None and not v.check_id(after):
        raise ServiceError("invalid", "after must be a customer id")
    limit = _q_int(request, "limit", 100, 1, 1000)
    items = await _svc(request).list_customers(after=after, limit=limit)
    nxt = items[-1].id if len(items) == limit else None
    return _ok({"items": [c.to_json() for c in items], "next": nxt})


async def create_customer(request: web.Request) -> web.Response:
    """POST /customers."""
    b = await _body(request)
    cid = v.opt_str(b, "id", 128)
    if cid is not None and not v.check_id(cid):
        raise ServiceError("invalid", "id: must match " + v.ID.pattern)
    c = await _svc(request).create_customer(
        actor=request[ACTOR_KEY],
        name=v.req_str(b, "name"),
        plan=v.req_str(b, "plan", 128),
        email=v.opt_str(b, "email", 320) or "",
        metadata=v.opt_object(b, "metadata"),
        anchor=v.opt_date(b, "anchor"),
        customer_id=cid,
    )
    return _ok(c.to_json(), 201)


async def get_customer(request: web.Request) -> web.Response:
    """GET /customers/{customer}."""
    return _ok((await _svc(request).get_customer(_path_id(request, "customer"))).to_json())


async def update_customer(request: web.Request) -> web.Response:
    """PATCH /customers/{customer}."""
    cid = _path_id(request, "customer")
    b = await _body(request)
    name = v.opt_str(b, "name")
    if name == "":
        raise ServiceError("invalid", "name: must not be empty")
    extra = (
        {"stripe_customer_id": v.opt_str(b, "stripe_customer_id", 254)}
        if ("stripe_customer_id" in b)
        else {}
    )  # null removes it; absent: unchanged
    c = await _svc(request).update_customer(
        cid,
        actor=request[ACTOR_KEY],
        name=name,
        email=v.opt_str(b, "email", 320),
        metadata=v.opt_object(b, "metadata"),
        **extra,
    )
    return _ok(c.to_json())


async def change_plan(request: web.Request) -> web.Response:
    """POST /customers/{customer}/plan."""
    cid = _path_id(request, "customer")
    b = await _body(request)
    c = await _svc(request).change_plan(
        cid,
        v.req_str(b, "plan", 128),
        actor=request[ACTOR_KEY],
        effective_at=v.opt_number(b, "effective_at"),
    )
    return _ok(c.to_json())


async def set_status(request: web.Request) -> web.Response:
    """POST /customers/{customer}/status."""
    cid = _path_id(request, "customer")
    b = await _body(request)
    c = await _svc(request).set_status(cid, v.req_str(b, "status", 32), actor=request[ACTOR_KEY])
    return _ok(c.to_json())


# --- keys, overrides, top-ups, audit -------------------------------------------------------


async def list_keys(request: web.Request) -> web.Response:
    """GET /customers/{customer}/keys."""
    keys = await _svc(request).list_keys(_path_id(request, "customer"))
    return _ok({"items": [k.to_json() for k in keys]})


async def issue_key(request: web.Request) -> web.Response:
    """POST /customers/{customer}/keys: the only response that ever contains the key."""
    issued = await _svc(request).issue_key(_path_id(request, "customer"), actor=request[ACTOR_KEY])
    return _ok({**issued.info.to_json(), "key": issued.key}, 201)


async def revoke_key(request: web.Request) -> web.Response:
    """POST /keys/{key}/revoke."""
    info = await _svc(request).revoke_key(_path_id(request, "key"), actor=request[ACTOR_KEY])
    return _ok(info.to_json())


async def set_override(request: web.Request) -> web.Response:
    """PUT /customers/{customer}/overrides/{meter}."""
    cid, meter = _path_id(request, "customer"), _path_id(request, "meter")
    units = v.req_int(await _body(request), "units")
    c = await _svc(request).set_override(cid, meter, units, actor=request[ACTOR_KEY])
    return _ok(c.to_json())


async def delete_override(request: web.Request) -> web.Response:
    """DELETE /customers/{customer}/overrides/{meter}."""
    cid, meter = _path_id(request, "customer"), _path_id(request, "meter")
    c = await _svc(request).set_override(cid, meter, None, actor=request[ACTOR_KEY])
    return _ok(c.to_json())


async def list_topups(request: web.Request) -> web.Response:
    """GET /customers/{customer}/topups."""
    items = await _svc(request).list_topups(_path_id(request, "customer"))
    return _ok({"items": [t.to_json() for t in items]})


async def add_topup(request: web.Request) -> web.Response:
    """POST /customers/{customer}/topups."""
    cid = _path_id(request, "customer")
    b = await _body(request)
    period = v.opt_date(b, "period")
    t = await _svc(request).add_topup(
        cid,
        v.req_str(b, "meter", 128),
        v.req_int(b, "units", 1),
        actor=request[ACTOR_KEY],
        period=period.isoformat() if period else None,
    )
    return _ok(t.to_json(), 201)


async def audit_log(request: web.Request) -> web.Response:
    """GET /audit?target=&after_id=&limit=."""
    target = request.query.get("target")
    if target is not None and not v.check_id(target):
        raise ServiceError("invalid", "target must be a customer or key id")
    entries = await _svc(request).audit_log(
        target=target,
        after_id=_q_int(request, "after_id", 0, 0, 2**62),
        limit=_q_int(request, "limit", 100, 1, 1000),
    )
    return _ok({"items": [e.to_json() for e in entries]})


def admin_routes(
    service: StoreService, token_sha256: str, currency_of: Callable[[str], str | None] | None = None
) -> web.Application:
    """Return the admin sub-application (mount it at ``/admin``).

    ``currency_of(plan)``: the currency of a plan's price, the currency credit balances are shown
    in (None: that of the customer's first usable grant).
    """
    app = web.Application(
        middlewares=[_auth_middleware(token_sha256), _errors], client_max_size=64 * 1024
    )
    app[SERVICE_KEY] = service
    r = app.router
    r.add_get("/customers", list_customers)
    r.add_post("/customers", create_customer)
    r.add_get("/customers/{customer}", get_customer)
    r.add_patch("/customers/{customer}", update_customer)
    r.add_post("/customers/{customer}/plan", change_plan)
    r.add_post("/customers/{customer}/status", set_status)
    r.add_get("/customers/{customer}/keys", list_keys)
    r.add_post("/customers/{customer}/keys", issue_key)
    r.add_post("/keys/{key}/revoke", revoke_key)
    r.add_put("/customers/{customer}/overrides/{meter}", set_override)
    r.add_delete("/customers/{customer}/overrides/{meter}", delete_override)
    r.add_get("/customers/{customer}/topups", list_topups)
    r.add_post("/customers/{customer}/topups", add_topup)
    r.add_get("/audit", audit_log)
    from tollhouse.admin.credits import add_credit_routes  # here: they use this module's helpers
    from tollhouse.admin.webhooks import add_webhook_routes
    from tollhouse.webhooks.outbox import Outbox

    add_credit_routes(app, currency_of)
    add_webhook_routes(app, Outbox(service.backend, clock=service.clock))
    return app


class _LiveNames:
    """The plan or meter names of the config in force now (follows hot reloads)."""

    def __init__(self, names: Callable[[], Collection[str]]) -> None:
        self._names = names

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def build_admin_app(
    cfg: Config, clock: Callable[[], float] = time.time, current: Callable[[], Config] | None = None
) -> web.Application:
    """Return the admin sub-app for ``cfg`` (needs ``store`` and ``admin.token_file``).

    The store connection is opened lazily and closed on the app's cleanup; the schema check is
    the Directory's (it refuses an unknown schema at start). Changes are checked against the
    plans and meters of ``current()`` (the config in force after hot reloads), else of ``cfg``.
    """
    if cfg.store is None or cfg.admin.token_file is None:
        raise ValueError("the admin API needs store.url and admin.token_file")
    backend = connect_backend(cfg.store.url)
    now = current or (lambda: cfg)
    service = StoreService(
        backend,
        clock=clock,
        plans=_LiveNames(lambda: now().plans.keys()),
        meters=_LiveNames(lambda: now().meters.keys()),
    )

    def currency_of(plan: str) -> str | None:
        p = now().plans.get(plan)
        return p.price.currency if p is not None and p.price is not None else None

    app = admin_routes(service, read_token_sha256(cfg.admin.token_file), currency_of)

    async def _close(_: web.Application) -> None:
        await backend.close()

    app.on_cleanup.append(_close)
    return app
