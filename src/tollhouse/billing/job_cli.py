"""The command line of ``tollhouse bill`` (a Kubernetes CronJob): arguments, exit codes, output.

The job itself is :func:`tollhouse.billing.job.run_billing`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tollhouse.billing.job import run_billing
from tollhouse.billing.periods import iso_utc
from tollhouse.config import ConfigError, load_config
from tollhouse.logs import configure_logging
from tollhouse.store.backend import StoreUnavailable
from tollhouse.store.schema import SchemaError

__all__ = ["add_bill_arguments", "main_bill"]


def add_bill_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE [--period YYYY-MM] [--out DIR] [--preview] [--now TIME]``."""
    parser.add_argument("--config", required=True, type=Path, help="tollhouse YAML config")
    parser.add_argument(
        "--period",
        help="billing period YYYY-MM (default: every ended period "
        "not issued yet; with --preview: the open one)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="invoice directory (default: billing.invoices_dir)"
    )
    parser.add_argument(
        "--preview",
        action="store_true",
        help="price without issuing anything (the open period by default)",
    )
    parser.add_argument(
        "--now",
        type=_parse_now,
        default=None,
        help="bill as of this earlier UTC time (ISO 8601; default: the clock)",
    )


def _parse_now(text: str) -> float:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()


def _clock(now: float | None) -> Callable[[], float]:
    """The real clock, or a fixed earlier instant (never later: open periods stay unissued)."""
    if now is None:
        return time.time
    if now > time.time():
        raise ValueError("--now must not be later than the current time")
    return lambda: now


def main_bill(args: argparse.Namespace) -> int:
    """Run ``tollhouse bill``; 0 when every customer was billed, 1 on problems, 2 on bad input."""
    configure_logging()
    try:
        clock = _clock(args.now)
        cfg = load_config(args.config)
        result = run_billing(
            cfg, period=args.period, out_dir=args.out, preview=args.preview, clock=clock
        )
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except SchemaError as e:
        print(f"store error: {e}", file=sys.stderr)
        return 2
    except StoreUnavailable as e:
        print(f"store unavailable: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"consumed {result.consumed} meter records, dead-lettered {result.dead_lettered}")
    if result.invoices:
        from tollhouse.billing.table import format_invoices, format_shadows

        print(format_invoices(result.invoices))
        print(*format_shadows(result.invoices), sep="\n", end="")
    for sub in result.default_plan:
        print(f"default_plan  {sub.id}  {sub.changes[0].plan}  since {iso_utc(sub.start_s)}")
    for note in result.notices:
        print(f"NOTE {note.customer}: {note.message}")
    if args.period is None and not args.preview and not result.invoices and result.ok:
        print("nothing due: every ended period is already invoiced")
    for pr in result.problems:
        print(f"PROBLEM {pr.customer}: {pr.message}", file=sys.stderr)
    return 0 if result.ok else 1
