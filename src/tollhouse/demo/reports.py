"""Hooks for what the demo prints after its scripted requests (usage, invoices: later issues).

A report is a function ``(DemoContext) -> None`` that writes to ``ctx.out``. It runs while the stack
is still up, so it may query tollhouse, read ``ctx.config_path`` or run ``tollhouse bill`` on it.
To add one, append it to :data:`REPORTS`, e.g. ``REPORTS = (print_usage, print_invoices)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tollhouse.demo.localstack import LocalStack
from tollhouse.demo.script import Outcome

__all__ = ["REPORTS", "DemoContext", "DemoReport", "run_reports"]


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

# Issue 3 adds the usage per customer, issue 6 the invoice summaries.
REPORTS: tuple[DemoReport, ...] = ()


def run_reports(ctx: DemoContext, reports: tuple[DemoReport, ...] | None = None) -> None:
    """Run each report in order (:data:`REPORTS` as it is at call time, by default)."""
    for report in REPORTS if reports is None else reports:
        report(ctx)
