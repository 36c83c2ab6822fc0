"""The handlers behind :mod:`tollhouse.billing.transparency_cli` (one per subcommand)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from decimal import Decimal
from typing import TextIO

from tollhouse.billing.export_stripe import StripeEvents, build_events
from tollhouse.billing.export_usage import export_usage, period_records
from tollhouse.billing.invoice import InvoiceProblem
from tollhouse.billing.ledger import Ledger
from tollhouse.billing.ledger_records import iso_ms
from tollhouse.billing.simulate import Simulation, load_plan_file, simulate_period
from tollhouse.billing.trace import LineTrace, TraceError, trace_invoice
from tollhouse.billing.transparency_cli import (
    _output,
    print_json,
    stripe_customers,
    subscriptions,
)
from tollhouse.config import Config

__all__ = ["cmd_export_stripe", "cmd_export_usage", "cmd_simulate", "cmd_trace"]

_SHOWN = 20  # refused events printed on stderr; --refused FILE gets them all


def _report_refused(ev: StripeEvents, path: object, err: TextIO) -> None:
    by_reason = Counter(r.reason for r in ev.refused)
    for reason, n in sorted(by_reason.items()):
        print(f"refused {n} event(s): {reason}", file=err)
    for r in ev.refused[:_SHOWN]:
        print(
            f"  refused {r.identifier} (customer {r.customer}, meter {r.meter or '-'}): {r.reason}",
            file=err,
        )
    if len(ev.refused) > _SHOWN and path is None:
        print(f"  ... {len(ev.refused) - _SHOWN} more (use --refused FILE)", file=err)


def cmd_export_stripe(args: argparse.Namespace, cfg: Config, ledger: Ledger) -> int:
    """``tollhouse export stripe``."""
    sc = cfg.export.stripe
    if sc is None:
        raise ValueError("export.stripe is not configured (meters: {tollhouse meter: event_name})")
    if args.push and args.now is not None:
        raise ValueError("--now cannot be used with --push (Stripe judges the window by its clock)")
    if args.push and sc.api_key_file is None:
        raise ValueError("export.stripe.api_key_file is needed for --push")
    now = time.time() if args.now is None else args.now
    recs = period_records(
        ledger, subscriptions(cfg), args.period, customer=args.customer, billable_only=True
    )
    ev = build_events(
        recs,
        meters=sc.meters,
        customers=stripe_customers(cfg),
        now_ms=int(now * 1000),
        aggregate=args.aggregate,
    )
    with _output(args.out) as out:
        for e in ev.events:
            out.write(json.dumps(e.to_json(), sort_keys=True, separators=(",", ":")) + "\n")
    if args.refused is not None:
        with _output(args.refused) as out:
            for r in ev.refused:
                out.write(json.dumps(r.to_json(), sort_keys=True) + "\n")
    for m, u in sorted(ev.unmapped_units.items()):
        print(
            f"not exported: {u} unit(s) of meter {m!r} (not in export.stripe.meters)",
            file=sys.stderr,
        )
    _report_refused(ev, args.refused, sys.stderr)
    print(
        f"{len(ev.events)} event(s) for {args.period}, {len(ev.refused)} refused", file=sys.stderr
    )
    if args.push:
        from tollhouse.billing.stripe_push import push_events, read_api_key

        res = push_events(
            ev.events,
            api_key=read_api_key(str(sc.api_key_file)),
            api_base=sc.api_base,
            meter_events_base=sc.meter_events_base,
            max_attempts=sc.max_attempts,
        )
        print(
            f"pushed {res.sent} of {len(ev.events)} event(s) in {res.batches} batch(es),"
            f" {res.attempts} request(s)" + ("" if res.ok else f"; stopped: {res.error}"),
            file=sys.stderr,
        )
        if not res.ok:
            return 1
    return 1 if ev.refused else 0


def cmd_export_usage(args: argparse.Namespace, cfg: Config, ledger: Ledger) -> int:
    """``tollhouse export usage``."""
    recs = period_records(
        ledger,
        subscriptions(cfg),
        args.period,
        customer=args.customer,
        billable_only=args.billable_only,
    )
    with _output(args.out) as out:
        res = export_usage(recs, args.format, out, sorted(cfg.meters))
    print(f"{res.exported} record(s) for {args.period}", file=sys.stderr)
    if res.untraceable:
        print(
            f"not exported: {len(res.untraceable)} record(s) consumed before ledger schema 3"
            f" keep no record body (first: {res.untraceable[0]}); export them from the meter",
            file=sys.stderr,
        )
        return 1
    return 0


def _money(cur: str, d: Decimal) -> str:
    return f"{cur} {d}"


def _print_simulations(res: list[Simulation | InvoiceProblem], out: TextIO) -> None:
    print(
        f"{'customer':<20} {'current':<12} {'current total':>16} {'candidate':<12}"
        f" {'candidate total':>16} {'difference':>12}",
        file=out,
    )
    for s in res:
        if isinstance(s, InvoiceProblem):
            print(f"{s.customer:<20} not priced: {s.message}", file=out)
            continue
        diff = s.difference
        d = "n/a (currency)" if diff is None else (f"+{diff}" if diff > 0 else str(diff))
        print(
            f"{s.customer:<20} {s.current_plan:<12} {_money(s.currency, s.current_total):>16}"
            f" {s.candidate_plan:<12} {_money(s.candidate_currency, s.candidate_total):>16}"
            f" {d:>12}",
            file=out,
        )
        for c in s.changes:
            print(f"    {c.what}: {c.current} -> {c.candidate}", file=out)


def cmd_simulate(args: argparse.Namespace, cfg: Config, ledger: Ledger) -> int:
    """``tollhouse simulate``."""
    extra = {}
    if args.plan_file is not None:
        name, plan = load_plan_file(args.plan_file, cfg)
        if name in cfg.plans:
            raise ValueError(f"the plan file names {name!r}, a plan of the catalog: rename it")
        extra[name] = plan
        candidates = [name]
    else:
        candidates = sorted(cfg.plans) if args.all_plans else [args.plan]
    res = simulate_period(
        ledger,
        cfg,
        subscriptions(cfg),
        args.period,
        candidates,
        extra=extra,
        customer=args.customer,
    )
    if args.json:
        print_json(
            [
                {"customer": s.customer, "problem": s.message}
                if isinstance(s, InvoiceProblem)
                else s.to_json()
                for s in res
            ]
        )
    else:
        _print_simulations(res, sys.stdout)
    return 0


def _print_trace(number: str, lines: list[LineTrace], rows: bool, out: TextIO) -> None:
    for t in lines:
        status = "OK" if t.ok else "MISMATCH"
        print(
            f"{number} line {t.index} ({t.kind} {t.period}, {t.meter}): invoice"
            f" {t.quantity} units in {t.records} records {t.digest}; recomputed"
            f" {t.found_units} in {t.found_records} {t.found_digest}: {status}",
            file=out,
        )
        if t.untraceable:
            print(
                f"  {t.untraceable} record(s) in range consumed before ledger schema 3:"
                " not traceable",
                file=out,
            )
        if rows:
            print("  usage_id\tdecision_id\tadmitted_at\trequest_id\tstate\tunits", file=out)
            for r in t.rows:
                print(
                    f"  {r.usage_id}\t{r.decision_id or '-'}\t{iso_ms(r.admitted_at_ms)}\t"
                    f"{r.request_id or '-'}\t{r.state}\t{r.units}",
                    file=out,
                )


def cmd_trace(args: argparse.Namespace, cfg: Config, ledger: Ledger) -> int:
    """``tollhouse trace``."""
    try:
        number = str(args.invoice)
        cust = ledger.one("SELECT customer FROM invoices WHERE number = ?", (number,))
        sub = None if cust is None else subscriptions(cfg).subscription(str(cust[0]))
        lines = trace_invoice(
            ledger,
            number,
            anchor=None if sub is None else sub.anchor,
            line=None if args.verify else args.line,
        )
    except TraceError as e:
        print(f"tollhouse: {e}", file=sys.stderr)
        return 2
    rows = not args.verify
    if args.json:
        print_json(
            {
                "invoice": number,
                "ok": all(t.ok for t in lines),
                "lines": [t.to_json(rows=rows) for t in lines],
            }
        )
    else:
        _print_trace(number, lines, rows, sys.stdout)
    bad = [t.index for t in lines if not t.ok]
    if bad:
        print(
            f"{number}: line(s) {', '.join(map(str, bad))} do not match their records",
            file=sys.stderr,
        )
    return 1 if bad else 0
