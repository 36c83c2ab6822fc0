"""What the demo prints after its scripted requests: usage per customer, invoices, /v1/usage.

A report is a function ``(DemoContext) -> None`` that writes to ``ctx.out``. It runs while the stack
is still up, so it may query tollhouse, read ``ctx.config_path`` or run the billing job on it.
:data:`REPORTS` lists them in order. Blocking code: the demo runs them from plain sync code.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from tollhouse.billing.table import format_invoices
from tollhouse.config import Config, load_config
from tollhouse.demo.localstack import LocalStack
from tollhouse.demo.script import Outcome

__all__ = [
    "REPORTS",
    "DemoContext",
    "DemoReport",
    "print_customer_view",
    "print_invoices",
    "print_usage",
    "run_reports",
    "wait_for_meter",
]

Clock = Callable[[], float]


@dataclass(frozen=True)
class DemoContext:
    """What a report can use: the running stack, its config file, and the scripted outcomes."""

    stack: LocalStack
    outcomes: tuple[Outcome, ...]
    out: TextIO

    @property
    def config_path(self) -> Path:
        """The running tollhouse's config file."""
        return self.stack.tollhouse.config_path

    @property
    def workdir(self) -> Path:
        """The run's directory (configs, logs, spool, meter, ledger)."""
        return self.stack.workdir


DemoReport = Callable[[DemoContext], None]


def _month_start_ms(now_s: float) -> int:
    now = datetime.fromtimestamp(now_s, UTC)
    return int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp() * 1000)


def wait_for_meter(
    cfg: Config, *, clock: Clock = time.time, sleep: Callable[[float], None] = time.sleep
) -> bool:
    """Wait until the spool holds no pending or unsent record of this month; True if it settled.

    A record is final once its access-log entry arrives (or, at the latest, after
    ``metering.unconfirmed_after_s``); the forwarder then moves it to the meter.
    """
    from tollhouse.envoy.als import entries_of
    from tollhouse.metering.report import reconcile

    deadline = clock() + cfg.metering.unconfirmed_after_s + 10.0
    while True:
        now = clock()
        try:
            rep = asyncio.run(
                reconcile(
                    cfg.metering.spool,
                    cfg.metering.meter,
                    _month_start_ms(now),
                    int(now * 1000) + 1,
                    entries_of,
                )
            )
            settled = rep.reserved == 0 and rep.unsent == 0
        except sqlite3.OperationalError:  # the meter file exists, its table not yet: in flight
            settled = False
        if settled:
            return True
        if now > deadline:
            return False
        sleep(0.2)


def print_usage(ctx: DemoContext, *, clock: Clock = time.time) -> None:
    """Usage per customer and meter this month, read from the meter (``tollhouse usage``)."""
    from tollhouse.metering.report import format_usage, usage_report

    cfg = load_config(ctx.config_path)
    settled = wait_for_meter(cfg, clock=clock)
    now = clock()
    rows = asyncio.run(
        usage_report(cfg.metering.meter, _month_start_ms(now), int(now * 1000) + 1, None)
    )
    ctx.out.write(
        "\nUsage this month per customer, from the meter (denied requests are not billed):\n"
    )
    ctx.out.write(format_usage(rows) + "\n")
    if not settled:
        ctx.out.write("(some records were still in flight: see `tollhouse usage --reconcile`)\n")
    ctx.out.flush()


def print_invoices(ctx: DemoContext, *, clock: Clock = time.time) -> None:
    """Run the billing job on the meter and print each customer's invoice for this month.

    The month is still open, so the invoices are previews (nothing is issued); their JSON, CSV
    and HTML files go to the config's ``billing.invoices_dir``, where ``tollhouse bill`` writes.
    """
    from tollhouse.billing.job import run_billing

    cfg = load_config(ctx.config_path)
    out_dir = cfg.billing.invoices_dir
    result = run_billing(cfg, period=None, out_dir=out_dir, preview=True, clock=clock)
    ctx.out.write(
        f"\nBilling job: {result.consumed} meter records into the ledger; this "
        "month's invoices so far (previews: the month is still open):\n"
    )
    ctx.out.write(format_invoices(result.invoices) + "\n")
    ctx.out.write(
        f"(JSON, CSV and HTML in {out_dir}; a temp workdir is removed at exit, "
        "keep it with --workdir DIR)\n"
    )
    for problem in result.problems:
        ctx.out.write(f"billing problem for {problem.customer}: {problem.message}\n")
    ctx.out.flush()


def print_customer_view(ctx: DemoContext) -> None:
    """What a customer sees: ``GET /v1/usage`` through Envoy with alice's own token."""
    resp = ctx.stack.request("/v1/usage", token=ctx.stack.token("alice"))
    if resp.status != 200:
        ctx.out.write(f"\nGET /v1/usage as alice: {resp.status} {resp.problem_code()}\n")
        return
    doc = resp.json()
    req = doc.get("meters", {}).get("requests", {})
    ctx.out.write(
        f"\nGET /v1/usage as alice (through Envoy): plan {doc.get('plan')}, "
        f"{req.get('used')} of {req.get('quota')} requests used, "
        f"{req.get('remaining')} left, charges so far {doc.get('currency')} "
        f"{doc.get('charges_so_far')}\n"
    )
    ctx.out.flush()


REPORTS: tuple[DemoReport, ...] = (print_usage, print_invoices, print_customer_view)


def run_reports(ctx: DemoContext, reports: tuple[DemoReport, ...] | None = None) -> None:
    """Run each report in order (:data:`REPORTS` as it is at call time, by default)."""
    for report in REPORTS if reports is None else reports:
        report(ctx)
