"""``tollhouse demo``: the whole stack on free ports, a scripted tour, a table, then a clean stop.

``--keep`` leaves the stack running and prints ready-to-paste curl commands until Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TextIO

from tollhouse.demo.localstack import LocalStack, StackPorts
from tollhouse.demo.reports import DemoContext, run_reports
from tollhouse.demo.script import format_table, run_steps, scripted_steps
from tollhouse.demo.stack import StackError
from tollhouse.demo.walkthrough import keep_help

__all__ = ["add_demo_arguments", "main_demo"]


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``tollhouse demo`` options to ``parser``."""
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the stack running and print curl commands until Ctrl-C",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="put configs, keys, logs and data here and keep them "
        "(default: a temp dir, removed at exit)",
    )


def _parse(argv: list[str] | argparse.Namespace | None) -> argparse.Namespace:
    if isinstance(argv, argparse.Namespace):
        return argv
    if argv is None:
        argv = sys.argv[1:]
        if argv[:1] == ["demo"]:
            argv = argv[1:]
    parser = argparse.ArgumentParser(prog="tollhouse demo", description=__doc__)
    add_demo_arguments(parser)
    return parser.parse_args(argv)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _hold(stack: LocalStack, out: TextIO, key_file: Path | None) -> int:
    out.write(keep_help(stack, key_file))
    out.flush()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        while stack.tollhouse.running and stack.envoy.running:
            time.sleep(0.5)
        out.write("a process of the stack exited; stopping\n")
        return 1
    except KeyboardInterrupt:
        out.write("\nstopping\n")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tour(stack: LocalStack, out: TextIO) -> int:
    outcomes = run_steps(stack, scripted_steps(stack))
    out.write(format_table(outcomes) + "\n")
    run_reports(DemoContext(stack, tuple(outcomes), out))
    bad = [o for o in outcomes if not o.as_expected]
    if bad:
        out.write(
            f"\n{len(bad)} request(s) did not get the expected status "
            f"(logs: {stack.tollhouse.log_path})\n"
        )
    return 1 if bad else 0


def main_demo(argv: list[str] | argparse.Namespace | None) -> int:
    """Run the demo; 0 when every scripted request got its expected status and all stopped.

    ``argv`` is the demo's own arguments, or a Namespace already parsed by a parser that
    :func:`add_demo_arguments` was applied to (what ``tollhouse.cli`` does).
    """
    args = _parse(argv)
    out = sys.stdout
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="tollhouse-demo-"))).resolve()
    out.write(f"starting tollhouse, Envoy and the demo API (files in {workdir})\n")
    out.flush()
    stack: LocalStack | None = None
    rc = 1
    try:
        stack = LocalStack(workdir, StackPorts.pick(), admin=True)
        key_file, _ = stack.write_keys(workdir / "keys")
        stack.start()
        out.write(f"Envoy listens on {stack.base_url}\n\n")
        rc = _tour(stack, out)
        if args.keep:
            rc = max(rc, _hold(stack, out, key_file))
    except StackError as e:
        out.write(f"the demo stack failed: {e}\n")
        rc = 2
    finally:
        stopped = stack.stop() if stack is not None else None
        if stopped not in (0, None):
            out.write(f"tollhouse exited with {stopped} on SIGTERM\n")
            rc = rc or 1
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return rc
