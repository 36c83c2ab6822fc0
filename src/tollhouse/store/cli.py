"""``tollhouse store migrate``, ``customers ...``, ``keys ...`` (and ``credits ...``: credits_cli).

Wire into ``tollhouse.cli`` with ``add_cli(sub)``: every command takes ``--config FILE`` (its
``store.url`` and catalog) or ``--store-url URL``, prints JSON on stdout, and calls the same
:class:`~tollhouse.store.service.StoreService` as the admin API (audit actor ``cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

from tollhouse.config import ConfigError, load_config
from tollhouse.store.backend import StoreUnavailable
from tollhouse.store.models import STATUSES, ServiceError
from tollhouse.store.schema import SchemaError, migrate, open_store
from tollhouse.store.service import StoreService

__all__ = ["add_cli", "run_migrate", "run_service"]

ACTOR = "cli"
Op = Callable[[StoreService, argparse.Namespace], Awaitable[Any]]


def _target(args: argparse.Namespace) -> tuple[str, set[str] | None, set[str] | None]:
    """Return (store url, plans, meters) from ``--store-url`` or ``--config``."""
    if args.store_url:
        return args.store_url, None, None
    if not args.config:
        raise ConfigError([("(args)", "give --config FILE or --store-url URL")], "tollhouse")
    cfg = load_config(args.config)
    if cfg.store is None:
        raise ConfigError([("store", "the config has no store section")], args.config)
    return cfg.store.url, set(cfg.plans), set(cfg.meters)


def _fail(message: str, code: int) -> int:
    print(f"tollhouse: {message}", file=sys.stderr)
    return code


def run_migrate(args: argparse.Namespace) -> int:
    """``tollhouse store migrate``: apply schema migrations; print the version."""
    try:
        url, _, _ = _target(args)
        version = asyncio.run(migrate(url))
    except ConfigError as e:
        return _fail(str(e), 2)
    except SchemaError as e:
        return _fail(str(e), 2)
    except StoreUnavailable as e:
        return _fail(str(e), 1)
    print(json.dumps({"schema_version": version}))
    return 0


def run_service(op: Op) -> Callable[[argparse.Namespace], int]:
    """Wrap a service call as a command handler: JSON out, exit 1 on a refused change."""

    def handler(args: argparse.Namespace) -> int:
        async def go() -> Any:
            url, plans, meters = _target(args)
            backend = await open_store(url)
            try:
                return await op(
                    StoreService(backend, clock=time.time, plans=plans, meters=meters), args
                )
            finally:
                await backend.close()

        try:
            result = asyncio.run(go())
        except ServiceError as e:
            return _fail(f"{e.code}: {e.detail}", 1)
        except (ConfigError, SchemaError) as e:
            return _fail(str(e), 2)
        except StoreUnavailable as e:
            return _fail(str(e), 1)
        except ValueError as e:  # --metadata that is not a JSON object
            return _fail(str(e), 2)
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0

    return handler


def _when(value: str) -> float:
    """Parse Unix seconds or an ISO 8601 time (UTC unless it has an offset)."""
    try:
        return float(value)
    except ValueError:
        dt = datetime.fromisoformat(value)
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _meta(raw: str | None) -> dict[str, Any] | None:
    meta = json.loads(raw) if raw else None
    if meta is not None and not isinstance(meta, dict):
        raise ValueError("--metadata must be a JSON object")
    return meta


async def _create(s: StoreService, a: argparse.Namespace) -> Any:
    meta = _meta(a.metadata)
    return (
        await s.create_customer(
            actor=ACTOR,
            name=a.name,
            plan=a.plan,
            email=a.email,
            metadata=meta,
            anchor=a.anchor,
            customer_id=a.id,
        )
    ).to_json()


async def _list(s: StoreService, a: argparse.Namespace) -> Any:
    return [c.to_json() for c in await s.list_customers(after=a.after, limit=a.limit)]


async def _update(s: StoreService, a: argparse.Namespace) -> Any:
    meta = _meta(a.metadata)
    extra = (
        {}
        if a.stripe_customer is None
        else {"stripe_customer_id": None if a.stripe_customer == "clear" else a.stripe_customer}
    )
    return (
        await s.update_customer(
            a.customer, actor=ACTOR, name=a.name, email=a.email, metadata=meta, **extra
        )
    ).to_json()


async def _override(s: StoreService, a: argparse.Namespace) -> Any:
    units = None if a.units == "clear" else int(a.units)
    return (await s.set_override(a.customer, a.meter, units, actor=ACTOR)).to_json()


async def _topup(s: StoreService, a: argparse.Namespace) -> Any:
    return (await s.add_topup(a.customer, a.meter, a.units, actor=ACTOR, period=a.period)).to_json()


async def _issue(s: StoreService, a: argparse.Namespace) -> Any:
    issued = await s.issue_key(a.customer, actor=ACTOR)
    return {**issued.info.to_json(), "key": issued.key}


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", help="YAML config with a store section")
    p.add_argument("--store-url", help="sqlite:///path or postgresql://... (instead of --config)")
    return p


def _customers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cs = sub.add_parser("customers", help="manage customers and subscriptions")
    c = cs.add_subparsers(dest="customers_command", required=True)
    p = _common(c.add_parser("create", help="create a customer (active subscription)"))
    p.add_argument("--name", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--id")
    p.add_argument("--email", default="")
    p.add_argument("--anchor", type=date.fromisoformat, help="billing anchor YYYY-MM-DD")
    p.add_argument("--metadata", help="a JSON object")
    p.set_defaults(func=run_service(_create))
    p = _common(c.add_parser("get", help="show one customer"))
    p.add_argument("customer")
    p.set_defaults(func=run_service(lambda s, a: _json(s.get_customer(a.customer))))
    p = _common(c.add_parser("list", help="list customers by id"))
    p.add_argument("--after")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=run_service(_list))
    p = _common(c.add_parser("update", help="change name, email or metadata"))
    p.add_argument("customer")
    p.add_argument("--name")
    p.add_argument("--email")
    p.add_argument("--metadata", help="a JSON object (replaces the old one)")
    p.add_argument("--stripe-customer", help="Stripe customer id (cus_...), or `clear`")
    p.set_defaults(func=run_service(_update))
    _subscriptions(c)


def _subscriptions(c: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _common(c.add_parser("plan", help="change plan (from --effective, default now)"))
    p.add_argument("customer")
    p.add_argument("plan")
    p.add_argument("--effective", type=_when, help="Unix seconds or ISO 8601 (UTC)")
    p.set_defaults(
        func=run_service(
            lambda s, a: _json(
                s.change_plan(a.customer, a.plan, actor=ACTOR, effective_at=a.effective)
            )
        )
    )
    p = _common(c.add_parser("status", help="set the subscription status"))
    p.add_argument("customer")
    p.add_argument("status", choices=STATUSES)
    p.set_defaults(
        func=run_service(lambda s, a: _json(s.set_status(a.customer, a.status, actor=ACTOR)))
    )
    p = _common(c.add_parser("override", help="override a meter's quota (UNITS or 'clear')"))
    p.add_argument("customer")
    p.add_argument("meter")
    p.add_argument("units")
    p.set_defaults(func=run_service(_override))
    p = _common(c.add_parser("topup", help="add units of a meter for a period"))
    p.add_argument("customer")
    p.add_argument("meter")
    p.add_argument("units", type=int)
    p.add_argument("--period", help="period start YYYY-MM-DD (default: the current period)")
    p.set_defaults(func=run_service(_topup))
    p = _common(c.add_parser("audit", help="show the audit log"))
    p.add_argument("--target")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(
        func=run_service(lambda s, a: _listing(s.audit_log(target=a.target, limit=a.limit)))
    )


async def _json(aw: Awaitable[Any]) -> Any:
    return (await aw).to_json()


async def _listing(aw: Awaitable[list[Any]]) -> Any:
    return [x.to_json() for x in await aw]


def _keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ks = sub.add_parser("keys", help="issue, revoke and list API keys")
    k = ks.add_subparsers(dest="keys_command", required=True)
    p = _common(k.add_parser("issue", help="issue a key: printed once, only its hash is stored"))
    p.add_argument("customer")
    p.set_defaults(func=run_service(_issue))
    p = _common(k.add_parser("revoke", help="revoke a key by its id"))
    p.add_argument("key_id")
    p.set_defaults(func=run_service(lambda s, a: _json(s.revoke_key(a.key_id, actor=ACTOR))))
    p = _common(k.add_parser("list", help="list a customer's keys (never the keys)"))
    p.add_argument("customer")
    p.set_defaults(func=run_service(lambda s, a: _listing(s.list_keys(a.customer))))


def add_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``store``, ``customers``, ``keys`` and ``credits`` to the ``tollhouse`` subcommands."""
    st = sub.add_parser("store", help="entitlement store administration")
    s = st.add_subparsers(dest="store_command", required=True)
    p = _common(s.add_parser("migrate", help="apply schema migrations (idempotent)"))
    p.set_defaults(func=run_migrate)
    _customers(sub)
    _keys(sub)
    from tollhouse.store.credits_cli import add_credits_cli  # it imports this module's helpers

    add_credits_cli(sub)
