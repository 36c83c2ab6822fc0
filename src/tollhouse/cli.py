"""The ``tollhouse`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from tollhouse.config import ConfigError, load_config
from tollhouse.logs import configure_logging

__all__ = ["build_parser", "main"]


def _cmd_serve(args: argparse.Namespace) -> int:
    from tollhouse.app import serve  # imported here: `tollhouse bill` never loads grpc
    from tollhouse.listeners import ListenError
    from tollhouse.store import SchemaError

    configure_logging(args.log_level)
    try:
        try:
            import uvloop

            if args.uvloop:
                uvloop.install()
        except ImportError:
            pass
        return asyncio.run(serve(Path(args.config)))
    except ConfigError as e:
        _print_config_error(e)
        return 2
    except SchemaError as e:
        print(f"tollhouse: entitlement store: {e} (run `tollhouse store migrate`)",
              file=sys.stderr)
        return 2
    except ListenError as e:
        print(f"tollhouse: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"tollhouse: cannot start: {e}", file=sys.stderr)
        return 2


def _print_config_error(e: ConfigError) -> None:
    print(f"{e.source}: invalid config", file=sys.stderr)
    for path, msg in e.problems:
        print(f"  {path}: {msg}", file=sys.stderr)


def _cmd_check_config(args: argparse.Namespace) -> int:
    bad = 0
    for f in args.files:
        try:
            cfg = load_config(f, key_files=True)
        except ConfigError as e:
            _print_config_error(e)
            bad += 1
            continue
        print(f"{f}: ok ({len(cfg.plans)} plans, {len(cfg.features)} features, "
              f"{len(cfg.customers)} customers, {len(cfg.auth.jwt)} issuers)")
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    """All subcommands."""
    parser = argparse.ArgumentParser(prog="tollhouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the ext_authz + access-log sidecar")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--log-level", default="info")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=False,
                   help="use uvloop's event loop")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check-config", help="validate config files; non-zero on any error")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_cmd_check_config)

    _add_optional(sub)
    return parser


def _parse_time_ms(value: str) -> int:
    """``2026-11-01`` or ``2026-11-01T12:00:00`` (UTC) -> epoch milliseconds."""
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _cmd_usage(args: argparse.Namespace) -> int:
    from tollhouse.metering.report import (
        format_reconcile,
        format_usage,
        reconcile,
        usage_report,
    )

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        _print_config_error(e)
        return 2
    now = datetime.now(UTC)
    since = _parse_time_ms(args.since) if args.since else int(
        datetime(now.year, now.month, 1, tzinfo=UTC).timestamp() * 1000)
    until = _parse_time_ms(args.until) if args.until else int(now.timestamp() * 1000) + 1
    rows = asyncio.run(usage_report(cfg.metering.meter, since, until, args.customer))
    print(format_usage(rows))
    if args.reconcile:
        rep = asyncio.run(reconcile(cfg.metering.spool, cfg.metering.meter, since, until))
        print()
        print(format_reconcile(rep))
    return 0


def _add_optional(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Subcommands whose code lives in their own packages (imported when run)."""
    from tollhouse.billing.job import add_bill_arguments, main_bill
    from tollhouse.demo import add_demo_arguments, main_demo

    p = sub.add_parser("demo", help="run the demo stack: tollhouse + Envoy + an upstream API")
    add_demo_arguments(p)
    p.set_defaults(func=main_demo)

    p = sub.add_parser("bill", help="the billing job: meter -> ledger -> invoices")
    add_bill_arguments(p)
    p.set_defaults(func=main_bill)

    p = sub.add_parser("usage", help="usage per customer and meter, read from the meter")
    p.add_argument("--config", required=True)
    p.add_argument("--since", help="UTC date or datetime (default: start of this month)")
    p.add_argument("--until", help="UTC date or datetime, exclusive (default: now)")
    p.add_argument("--customer")
    p.add_argument("--reconcile", action="store_true",
                   help="also show reserved / confirmed / voided / unconfirmed counts")
    p.set_defaults(func=_cmd_usage)

    from tollhouse.store.cli import add_cli

    add_cli(sub)

    from tollhouse.billing.transparency_cli import add_cli as add_transparency_cli

    add_transparency_cli(sub)  # export, simulate, trace (issue 16)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
