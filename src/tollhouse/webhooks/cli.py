"""``tollhouse webhooks add|list|rm|disable|enable|test|redeliver|deliveries``.

Same conventions as the store CLI (``--config FILE`` or ``--store-url URL``, JSON on stdout,
audit actor ``cli``). ``add`` prints the secret once; nothing else ever shows it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tollhouse.store.cli import ACTOR, _common, run_service
from tollhouse.store.models import ServiceError
from tollhouse.store.service import StoreService
from tollhouse.webhooks.outbox import Outbox

__all__ = ["add_webhooks_cli"]


def _box(s: StoreService) -> Outbox:
    return Outbox(s.backend, clock=time.time)


def _read_secret(path: str | None) -> str | None:
    """The secret from ``path`` (``-``: stdin), never from argv, where ``ps`` would show it."""
    if path is None:
        return None
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ServiceError("invalid", f"--secret-file: cannot read {path}: {e.strerror}") from e
    if not text.strip():
        raise ServiceError("invalid", f"--secret-file: the file is empty: {path}")
    return text.strip()


async def _add(s: StoreService, a: argparse.Namespace) -> Any:
    ep, secret = await _box(s).create_endpoint(
        actor=ACTOR, url=a.url, events=a.events or ["*"], secret=_read_secret(a.secret_file)
    )
    return {**ep.to_json(), "secret": secret}


async def _list(s: StoreService, a: argparse.Namespace) -> Any:
    del a
    return [e.to_json() for e in await _box(s).list_endpoints()]


async def _rm(s: StoreService, a: argparse.Namespace) -> Any:
    return (await _box(s).delete_endpoint(a.webhook, actor=ACTOR)).to_json()


def _enable(enabled: bool) -> Any:
    async def op(s: StoreService, a: argparse.Namespace) -> Any:
        return (await _box(s).set_enabled(a.webhook, enabled, actor=ACTOR)).to_json()

    return op


async def _test(s: StoreService, a: argparse.Namespace) -> Any:
    return (await _box(s).send_test(a.webhook, actor=ACTOR)).to_json()


async def _redeliver(s: StoreService, a: argparse.Namespace) -> Any:
    box = _box(s)
    if a.event:
        return [d.to_json() for d in await box.redeliver_event(a.event, actor=ACTOR)]
    return {"requeued": await box.redeliver_dead(a.dead, actor=ACTOR)}


async def _deliveries(s: StoreService, a: argparse.Namespace) -> Any:
    items = await _box(s).list_deliveries(
        endpoint_id=a.webhook, event_id=a.event, state=a.state, limit=a.limit
    )
    return [d.to_json() for d in items]


def _with_id(
    w: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str, op: Any
) -> None:
    p = _common(w.add_parser(name, help=help_))
    p.add_argument("webhook", help="the endpoint id (wh_...)")
    p.set_defaults(func=run_service(op))


def add_webhooks_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``webhooks`` to the ``tollhouse`` subcommands."""
    ws = sub.add_parser("webhooks", help="webhook endpoints, test deliveries and redelivery")
    w = ws.add_subparsers(dest="webhooks_command", required=True)
    p = _common(w.add_parser("add", help="register an endpoint (prints its secret once)"))
    p.add_argument("url")
    p.add_argument(
        "--event",
        dest="events",
        action="append",
        help="an event type to deliver (repeat; default: every type)",
    )
    p.add_argument(
        "--secret-file",
        metavar="PATH",
        help="a file holding whsec_<base64> ('-': stdin; default: generated)",
    )
    p.set_defaults(func=run_service(_add))
    p = _common(w.add_parser("list", help="list endpoints (never their secrets)"))
    p.set_defaults(func=run_service(_list))
    _with_id(w, "rm", "delete an endpoint (its pending deliveries become dead)", _rm)
    _with_id(w, "disable", "stop delivering to an endpoint", _enable(False))
    _with_id(w, "enable", "deliver to an endpoint again", _enable(True))
    _with_id(w, "test", "queue a signed webhook.test event for an endpoint", _test)
    p = _common(w.add_parser("redeliver", help="send an event again, or an endpoint's dead ones"))
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--event", help="an event id (evt_...): to every endpoint it was for")
    g.add_argument("--dead", metavar="WEBHOOK", help="an endpoint id: all its dead deliveries")
    p.set_defaults(func=run_service(_redeliver))
    p = _common(w.add_parser("deliveries", help="list deliveries, newest first"))
    p.add_argument("--webhook")
    p.add_argument("--event")
    p.add_argument("--state", choices=["pending", "delivered", "dead"])
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=run_service(_deliveries))
