"""The ``tollhouse`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tollhouse.config import Config, ConfigError, load_config, sqlite_path
from tollhouse.config.locations import no_password
from tollhouse.logs import configure_logging
from tollhouse.sqlite import connect_existing

__all__ = ["EXIT_DATA", "build_parser", "main"]

EXIT_DATA = 3  # usage / bill: the meter, spool or ledger cannot be read (corrupt, unreachable)


def _cmd_serve(args: argparse.Namespace) -> int:
    from tollhouse.app import serve  # imported here: `tollhouse bill` never loads grpc
    from tollhouse.listeners import ListenError
    from tollhouse.metering.factlog import SpoolError
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
        print(f"tollhouse: entitlement store: {e} (run `tollhouse store migrate`)", file=sys.stderr)
        return 2
    except ListenError as e:
        print(f"tollhouse: {e}", file=sys.stderr)
        return 2
    except SpoolError as e:  # the spool cannot be read (one that cannot write starts unready)
        print(f"tollhouse: {e} (see `tollhouse spool check`)", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"tollhouse: cannot start: {e}", file=sys.stderr)
        return 2


def _print_config_error(e: ConfigError) -> None:
    print(f"{e.source}: invalid config", file=sys.stderr)
    for path, msg in e.problems:
        print(f"  {path}: {msg}", file=sys.stderr)


def _count(n: int, noun: str) -> str:
    """``1 issuer``, ``2 issuers``, ``0 issuers``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _store_problems(cfg: Config, source: str) -> bool:
    """Plans store customers are on that ``cfg`` lacks: print them; True if there are any."""
    if cfg.store is None:
        return False
    from tollhouse.store.plan_use import store_plan_problems

    # The store's own log lines (unreachable, loaded) are not this command's output.
    logging.getLogger("tollhouse").addHandler(logging.NullHandler())
    problems, note = asyncio.run(store_plan_problems(cfg))
    if note is not None:
        print(f"{source}: warning: {note}", file=sys.stderr)
    if problems:
        _print_config_error(ConfigError(problems, source))
    return bool(problems)


def _cmd_check_config(args: argparse.Namespace) -> int:
    bad = 0
    for f in args.files:
        try:
            cfg = load_config(f, key_files=True)
        except ConfigError as e:
            _print_config_error(e)
            bad += 1
            continue
        if args.store and _store_problems(cfg, str(f)):
            bad += 1
            continue
        counts = (
            _count(len(cfg.plans), "plan"),
            _count(len(cfg.features), "feature"),
            _count(len(cfg.customers), "customer"),
            _count(len(cfg.auth.jwt), "issuer"),
        )
        print(f"{f}: ok ({', '.join(counts)})")
    return 1 if bad else 0


def _data_errors() -> tuple[type[Exception], ...]:
    """What a corrupt or unreachable meter, spool or ledger raises (imported when needed)."""
    import psycopg
    from google.protobuf.message import DecodeError
    from redis.exceptions import RedisError

    return (sqlite3.DatabaseError, RedisError, DecodeError, OSError, psycopg.Error)


def _sqlite_readable(url: str) -> bool:
    """Whether the SQLite file of ``url`` is absent or passes a quick integrity check."""
    path = sqlite_path(url)
    if not path.is_file():
        return True
    try:
        with contextlib.closing(connect_existing(path)) as conn:
            return bool(conn.execute("PRAGMA quick_check(1)").fetchone() == ("ok",))
    except sqlite3.Error:
        return False


def _data_error(command: str, e: BaseException, sources: list[str]) -> int:
    """One line naming what cannot be read (the corrupt SQLite file when one is), exit 3."""
    what = ", ".join(no_password(u) for u in _suspects(e, sources)) or "its data"
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"tollhouse {command}: cannot read {what}: {reason}", file=sys.stderr)
    return EXIT_DATA


def _suspects(e: BaseException, sources: list[str]) -> list[str]:
    """The sources ``e`` can come from: the damaged SQLite file, or the Redis URLs."""
    from tollhouse.metering.meter_file import MeterCorrupt

    if isinstance(e, MeterCorrupt):  # readable, but a row disagrees with its record
        return [
            u for u in sources if u.startswith("sqlite:///") and sqlite_path(u).resolve() == e.path
        ] or sources
    if isinstance(e, sqlite3.DatabaseError):
        files = [u for u in sources if u.startswith("sqlite:///")]
        return [u for u in files if not _sqlite_readable(u)] or files or sources
    if type(e).__module__.startswith("redis."):
        return [u for u in sources if u.startswith(("redis://", "rediss://"))] or sources
    if type(e).__module__.startswith("psycopg"):  # a PostgreSQL ledger lost mid-run
        return [u for u in sources if u.startswith(("postgresql://", "postgres://"))] or sources
    return sources


def _data_sources(cfg: Config, *, spool: bool = False, ledger: bool = False) -> list[str]:
    urls = [cfg.metering.meter.url]
    if ledger:
        urls.append(cfg.billing.ledger)
    if spool:
        urls.append(str(cfg.metering.spool))
    return urls


def build_parser() -> argparse.ArgumentParser:
    """All subcommands."""
    parser = argparse.ArgumentParser(prog="tollhouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the ext_authz + access-log sidecar")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--uvloop",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="use uvloop's event loop",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check-config", help="validate config files; non-zero on any error")
    p.add_argument("files", nargs="+")
    p.add_argument(
        "--store",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also check, when the entitlement store is reachable, that every plan "
        "its customers are on is in the file (default: on)",
    )
    p.set_defaults(func=_cmd_check_config)

    _add_optional(sub)
    return parser


def _parse_time_ms(value: str, option: str) -> int:
    """``2026-11-01`` or ``2026-11-01T12:00:00`` (UTC) -> epoch milliseconds."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{option}: not an ISO 8601 date or date-time: {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _entries_of() -> Any:
    from tollhouse.envoy.als import entries_of  # here: grpc only for --reconcile

    return entries_of


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    try:
        since = (
            _parse_time_ms(args.since, "--since")
            if args.since
            else int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp() * 1000)
        )
        until = (
            _parse_time_ms(args.until, "--until") if args.until else int(now.timestamp() * 1000) + 1
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(usage_report(cfg.metering.meter, since, until, args.customer))
        rep = (
            asyncio.run(
                reconcile(cfg.metering.spool, cfg.metering.meter, since, until, _entries_of())
            )
            if args.reconcile
            else None
        )
    except _data_errors() as e:
        return _data_error("usage", e, _data_sources(cfg, spool=args.reconcile))
    print(f"usage admitted from {_iso_ms(since)} to {_iso_ms(until)} (UTC, end exclusive)")
    print(format_usage(rows))
    if rep is not None:
        print()
        print(format_reconcile(rep))
    return 0


def _cmd_bill(args: argparse.Namespace) -> int:
    from tollhouse.billing.job_cli import main_bill

    try:
        return main_bill(args)
    except _data_errors() as e:
        try:
            cfg = load_config(args.config)
        except ConfigError:
            return _data_error("bill", e, [])
        return _data_error("bill", e, _data_sources(cfg, ledger=True))


def _add_optional(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Subcommands whose code lives in their own packages (imported when run)."""
    from tollhouse.billing.job_cli import add_bill_arguments
    from tollhouse.demo import add_demo_arguments, main_demo

    p = sub.add_parser("demo", help="run the demo stack: tollhouse + Envoy + an upstream API")
    add_demo_arguments(p)
    p.set_defaults(func=main_demo)

    p = sub.add_parser("bill", help="the billing job: meter -> ledger -> invoices")
    add_bill_arguments(p)
    p.set_defaults(func=_cmd_bill)

    p = sub.add_parser("usage", help="usage per customer and meter, read from the meter")
    p.add_argument("--config", required=True)
    p.add_argument("--since", help="UTC date or datetime (default: start of this month)")
    p.add_argument("--until", help="UTC date or datetime, exclusive (default: now)")
    p.add_argument("--customer")
    p.add_argument(
        "--reconcile",
        action="store_true",
        help="also show reserved / confirmed / voided / unconfirmed counts",
    )
    p.set_defaults(func=_cmd_usage)

    from tollhouse.metering.salvage import add_spool_arguments, main_spool

    p = sub.add_parser("spool", help="check or salvage a metering spool directory")
    add_spool_arguments(p)
    p.set_defaults(func=main_spool)

    from tollhouse.store.cli import add_cli

    add_cli(sub)

    from tollhouse.webhooks.cli import add_webhooks_cli

    add_webhooks_cli(sub)

    from tollhouse.devcli import add_dev_cli

    add_dev_cli(sub)

    from tollhouse.billing.transparency_cli import add_cli as add_transparency_cli

    add_transparency_cli(sub)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
