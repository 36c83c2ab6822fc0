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

__all__ = ["add_demo_arguments", "main_demo"]


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``tollhouse demo`` options to ``parser``."""
    parser.add_argument("--keep", action="store_true",
                        help="leave the stack running and print curl commands until Ctrl-C")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="put configs, keys, logs and data here and keep them "
                             "(default: a temp dir, removed at exit)")


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


def _curl_help(stack: LocalStack, out: TextIO) -> None:
    base = stack.base_url
    alice, bob = stack.token("alice", lifetime_s=8 * 3600), stack.token("bob", lifetime_s=8 * 3600)
    out.write(f"""
The stack is running (Ctrl-C to stop). Demo credentials, valid for 8 hours:

  export ALICE='{alice}'
  export BOB='{bob}'
  export GLOBEX_KEY='{stack.api_key}'

Try:
  curl -i '{base}/v1/search?q=envoy' -H "authorization: Bearer $ALICE"      # 200, free plan
  curl -i '{base}/v1/export/report.csv' -H "authorization: Bearer $ALICE"   # 403 not entitled
  curl -i '{base}/v1/export/report.csv' -H "authorization: Bearer $BOB"     # 200, pro plan
  curl -i '{base}/v1/reports/monthly?tokens=1200' -H "x-api-key: $GLOBEX_KEY"  # 200, enterprise
  curl -i '{base}/v1/search'                                                # 401 no credentials
  curl -i '{base}/v1/search' -H "authorization: Bearer $BOB" -H "x-api-key: $GLOBEX_KEY"  # 400

tollhouse config (hot-reloaded on save): {stack.tollhouse.config_path}
tollhouse metrics: http://127.0.0.1:{stack.ports.tollhouse_admin}/metrics
Envoy admin:       http://127.0.0.1:{stack.ports.envoy_admin}/stats
Logs:              {stack.tollhouse.log_path}  {stack.envoy.log_path}
""")
    out.flush()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _hold(stack: LocalStack, out: TextIO) -> int:
    _curl_help(stack, out)
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
        out.write(f"\n{len(bad)} request(s) did not get the expected status "
                  f"(logs: {stack.tollhouse.log_path})\n")
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
        stack = LocalStack(workdir, StackPorts.pick())
        stack.start()
        out.write(f"Envoy listens on {stack.base_url}\n\n")
        rc = _tour(stack, out)
        if args.keep:
            rc = max(rc, _hold(stack, out))
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
