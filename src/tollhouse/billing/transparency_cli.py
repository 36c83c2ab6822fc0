"""The command line of ``tollhouse export``, ``simulate`` and ``trace``.

They read the ledger (as ``tollhouse bill`` left it) and never consume the meter or issue anything.
Exit codes: 0 done, 1 something was refused, failed to verify or to push (reported on stderr),
2 bad input (config, period, plan, invoice number).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tollhouse.billing.ledger import Ledger, open_ledger
from tollhouse.billing.store_subscriptions import StoreSubscriptions
from tollhouse.billing.subscriptions import ConfigSubscriptions, SubscriptionSource
from tollhouse.config import Config, ConfigError, load_config
from tollhouse.logs import configure_logging

__all__ = ["add_cli", "stripe_customers", "subscriptions"]

Handler = Callable[[argparse.Namespace, Config, Ledger], int]


def subscriptions(cfg: Config, clock: Callable[[], float] = time.time) -> SubscriptionSource:
    """The billing job's subscriptions: the entitlement store when configured, else the config."""
    if cfg.store is None:
        return ConfigSubscriptions(cfg)
    return StoreSubscriptions(cfg.store.url, cfg, clock=clock)


async def _store_stripe_ids(url: str) -> dict[str, str]:
    from tollhouse.store.schema import open_store

    backend = await open_store(url)
    try:
        async with backend.transaction(readonly=True) as tx:
            rows = await tx.execute(
                "SELECT id, stripe_customer_id FROM customers WHERE stripe_customer_id IS NOT NULL"
            )
    finally:
        await backend.close()
    return {str(c): str(s) for c, s in rows}


def stripe_customers(cfg: Config) -> dict[str, str]:
    """Map tollhouse customers to Stripe's: the store field over ``export.stripe.customers``."""
    base = dict(cfg.export.stripe.customers) if cfg.export.stripe is not None else {}
    if cfg.store is not None:
        base.update(asyncio.run(_store_stripe_ids(cfg.store.url)))
    return base


def _parse_time(text: str) -> float:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        yield f
    tmp.replace(path)


def _run(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def main(args: argparse.Namespace) -> int:
        from tollhouse.store.backend import StoreUnavailable
        from tollhouse.store.schema import SchemaError

        configure_logging()
        try:
            cfg = load_config(args.config)
            ledger = open_ledger(cfg.billing.ledger)
        except ConfigError as e:
            print(f"{e.source}: invalid config", file=sys.stderr)
            for where, msg in e.problems:
                print(f"  {where}: {msg}", file=sys.stderr)
            return 2
        try:
            return handler(args, cfg, ledger)
        except ConfigError as e:
            print(f"{e.source}: " + "; ".join(f"{w}: {m}" for w, m in e.problems), file=sys.stderr)
            return 2
        except (SchemaError, StoreUnavailable) as e:
            print(f"store error: {e}", file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"tollhouse: {e}", file=sys.stderr)
            return 2
        finally:
            ledger.close()

    return main


def _common(p: argparse.ArgumentParser, *, period: bool = True) -> None:
    p.add_argument("--config", required=True, type=Path, help="tollhouse YAML config")
    if period:
        p.add_argument("--period", required=True, help="billing period YYYY-MM")
        p.add_argument("--customer", help="only this customer")


def add_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``export stripe``, ``export usage``, ``simulate`` and ``trace``."""
    from tollhouse.billing import transparency_cmds as cmds

    exp = sub.add_parser("export", help="usage for other systems (Stripe, CloudEvents, CSV)")
    kinds = exp.add_subparsers(dest="export_kind", required=True)
    p = kinds.add_parser("stripe", help="Stripe billing meter events (JSONL), optionally pushed")
    _common(p)
    p.add_argument("--out", type=Path, help="JSONL file (default: stdout)")
    p.add_argument(
        "--aggregate",
        choices=("hour", "day"),
        help="one event per customer x meter x bucket (no per-request identifier)",
    )
    p.add_argument("--refused", type=Path, help="write every refused event here (JSONL)")
    p.add_argument(
        "--push",
        action="store_true",
        help="send the events with the stripe SDK (export.stripe.api_key_file)",
    )
    p.add_argument(
        "--now",
        type=_parse_time,
        default=None,
        help="judge Stripe's window as of this UTC time (not with --push)",
    )
    p.set_defaults(func=_run(cmds.cmd_export_stripe))
    p = kinds.add_parser("usage", help="final usage records: JSONL, CSV or CloudEvents")
    _common(p)
    p.add_argument("--format", choices=("jsonl", "csv", "cloudevents"), default="jsonl")
    p.add_argument("--out", type=Path, help="file (default: stdout)")
    p.add_argument("--billable-only", action="store_true", help="only billable records")
    p.set_defaults(func=_run(cmds.cmd_export_usage))

    p = sub.add_parser("simulate", help="price a period's real usage under a candidate plan")
    _common(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--plan", help="a plan of the config's catalog")
    which.add_argument("--plan-file", type=Path, help="a YAML plan (NAME: {...} or a bare plan)")
    which.add_argument("--all-plans", action="store_true", help="every catalog plan (a matrix)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=_run(cmds.cmd_simulate))

    p = sub.add_parser("trace", help="follow an issued invoice's lines back to their requests")
    _common(p, period=False)
    p.add_argument("invoice", help="invoice number, e.g. TH-2026-11-acme")
    p.add_argument("line", nargs="?", help="line number (1..) or meter; default: every line")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every line's units, records and digest; print no requests",
    )
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.set_defaults(func=_run(cmds.cmd_trace))


def print_json(data: Any, out: TextIO | None = None) -> None:
    """Pretty JSON, sorted keys (default: the current stdout)."""
    (out or sys.stdout).write(json.dumps(data, indent=2, sort_keys=True) + "\n")
