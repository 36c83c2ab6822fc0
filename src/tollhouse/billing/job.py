"""``tollhouse bill``: consume the meter into the ledger, price each customer's period, issue.

A separate process (a Kubernetes CronJob). It must not import grpc or ``tollhouse.envoy``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal

from tollhouse.billing.consume import consume_sqlite_meter
from tollhouse.billing.due import due_periods
from tollhouse.billing.invoice import BuildInput, Invoice, InvoiceProblem, build_invoice
from tollhouse.billing.invoice_credits import log_not_applied
from tollhouse.billing.ledger import FailureHook, Ledger, open_ledger
from tollhouse.billing.metrics import INVOICES_ISSUED, LATE_RECORDS
from tollhouse.billing.periods import Period, iso_utc, period_containing, period_for_label
from tollhouse.billing.render import render_json, write_invoice_files
from tollhouse.billing.roster import Notice, build_roster, not_subscribed
from tollhouse.billing.simulate import Simulation, shadow_simulation
from tollhouse.billing.store_subscriptions import StoreSubscriptions
from tollhouse.billing.subscriptions import ConfigSubscriptions, SubscriptionSource, segments
from tollhouse.config import Config
from tollhouse.logs import get_logger
from tollhouse.metering.schema import DEAD_LETTER_KEY, STREAM_KEY
from tollhouse.subscriber import Subscriber

__all__ = ["BillingResult", "InvoiceSummary", "JobOptions", "run_billing"]

log = get_logger(__name__)


def _noop(_: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Knobs that tests and operators may turn; defaults suit production."""

    hook: FailureHook = field(default=_noop)
    stream_key: str = STREAM_KEY
    dead_key: str = DEAD_LETTER_KEY
    consumer: str | None = None  # default: config ``instance`` or the host name
    claim_idle_ms: int = 60_000
    batch: int = 50_000
    redis_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class InvoiceSummary:
    """One customer's outcome: issued now, issued before (re-rendered), or a preview."""

    number: str
    customer: str
    period: str
    currency: str
    total: Decimal
    status: Literal["issued", "already_issued", "preview"]
    files: tuple[Path, ...]
    shadow: Simulation | InvoiceProblem | None = None  # previews: the plan's shadow_price
    amount_due: Decimal | None = None  # total - prepaid credits applied (None: no credits)


@dataclass(frozen=True, slots=True)
class BillingResult:
    """What a run did. ``problems`` are per-customer failures (the others were still billed).

    ``default_plan``: the callers billed on ``default_plan`` (their starts resolved);
    ``notices``: customers not invoiced by rule (not started yet, or not in that period).
    """

    consumed: int
    dead_lettered: int
    invoices: tuple[InvoiceSummary, ...]
    problems: tuple[InvoiceProblem, ...]
    default_plan: tuple[Subscriber, ...] = ()
    notices: tuple[Notice, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every customer was billed."""
        return not self.problems


def _consume(cfg: Config, ledger: Ledger, opts: JobOptions) -> tuple[int, int]:
    meter = cfg.metering.meter
    if meter.kind == "sqlite":
        return consume_sqlite_meter(ledger, meter, batch=opts.batch, hook=opts.hook), 0
    return asyncio.run(_consume_redis(cfg, ledger, opts))


async def _consume_redis(cfg: Config, ledger: Ledger, opts: JobOptions) -> tuple[int, int]:
    import redis.asyncio as aioredis

    from tollhouse.billing.consume_redis import RedisConsumer

    client = aioredis.from_url(
        cfg.metering.meter.url,
        socket_timeout=opts.redis_timeout_s,
        socket_connect_timeout=opts.redis_timeout_s,
    )
    try:
        consumer = RedisConsumer(
            client,
            ledger,
            cfg.billing.consumer_group,
            opts.consumer or cfg.instance or socket.gethostname(),
            max_deliveries=cfg.billing.max_deliveries,
            stream_key=opts.stream_key,
            dead_key=opts.dead_key,
            batch=min(opts.batch, 5000),
            claim_idle_ms=opts.claim_idle_ms,
            timeout_s=opts.redis_timeout_s,
            hook=opts.hook,
        )
        stats = await consumer.run()
    finally:
        await client.aclose()
    return stats.read, stats.dead_lettered


@dataclass(frozen=True, slots=True)
class _Run:
    cfg: Config
    ledger: Ledger
    label: str | None
    now: float
    preview: bool
    upto: int
    out_dir: Path | None


def _order_problem(ledger: Ledger, sub: Subscriber, p: Period) -> str | None:
    last = ledger.last_invoice(sub.id)
    if last is None:
        return None
    if last[0] >= p.label:
        return f"{p.label} precedes the last issued invoice ({last[0]}); issued invoices are final"
    expected = period_for_label(last[0], sub.anchor).next(sub.anchor).label
    if expected != p.label:
        return f"bill {expected} first (periods are invoiced in order)"
    return None


def _unbilled_after_cancel(run: _Run, sub: Subscriber, p: Period) -> int | None:
    """Earliest unbilled usage (ms) admitted before ``p`` ends, of a cancelled subscription.

    Unbilled: in a generation after the last invoice (late usage), or admitted in a period that
    starts after the cancellation (never invoiced), whatever its generation.
    """
    last = run.ledger.last_invoice(sub.id)
    late = run.ledger.first_admitted_ms(
        sub.id, p.end_ms, min_seq=0 if last is None else last[1], max_seq=run.upto
    )
    since = sub.status_since_s if sub.status_since_s is not None else p.start_s
    first_off = period_containing(since - 1, sub.anchor).next(sub.anchor)
    after = run.ledger.first_admitted_ms(
        sub.id, p.end_ms, min_seq=0, max_seq=run.upto, after_ms=first_off.start_ms
    )
    return min((t for t in (late, after) if t is not None), default=None)


def _gate(run: _Run, sub: Subscriber, p: Period) -> InvoiceProblem | Literal[True] | None:
    """``True``: bill ``p``; ``None``: nothing to bill (cancelled before ``p``); or a problem."""
    unknown = sorted({plan for plan, _, _ in segments(sub.changes, p)} - set(run.cfg.plans))
    if unknown:
        return InvoiceProblem(sub.id, f"plan {unknown[0]!r} is not in the config's catalog")
    if not sub.cancelled_before(p):
        return True
    pending = _unbilled_after_cancel(run, sub, p)
    if pending is None:
        return None
    return InvoiceProblem(
        sub.id,
        f"cancelled before {p.label} but has unbilled usage "
        f"(admitted at {iso_utc(pending / 1000)}); reactivate to bill it",
    )


def _bill_period(
    run: _Run, sub: Subscriber, p: Period
) -> InvoiceSummary | InvoiceProblem | Notice | None:
    cust = sub.id
    stored = run.ledger.get_invoice(cust, p.label)
    if stored is not None:
        return _summary(json.loads(stored), "already_issued", run.out_dir)
    if p.end_s <= sub.start_s:  # no invoice, no base fee before the subscription starts
        return not_subscribed(sub, p.label)
    gate = _gate(run, sub, p)
    if gate is not True:
        return gate
    if not run.preview and p.end_s > run.now:
        return InvoiceProblem(
            cust, f"{p.label} is still open until {iso_utc(p.end_s)}; use --preview"
        )
    problem = _order_problem(run.ledger, sub, p)
    if problem is not None and not run.preview:
        return InvoiceProblem(cust, problem)
    last = run.ledger.last_invoice(cust)
    inp = BuildInput(
        run.cfg.plans,
        sub,
        p,
        run.upto,
        0 if last is None else last[1],
        "preview" if run.preview else "issued",
        run.now,
    )
    inv = build_invoice(run.ledger, inp)
    log_not_applied(inv.document if isinstance(inv, Invoice) else {})
    if isinstance(inv, InvoiceProblem) or run.preview:
        return (
            inv
            if isinstance(inv, InvoiceProblem)
            else dataclasses.replace(
                _summary(inv.document, "preview", run.out_dir),
                shadow=shadow_simulation(
                    run.ledger, run.cfg.plans, sub, p.label, inv.document["plan"]
                ),
            )
        )
    if not run.ledger.issue(
        inv.number, cust, p.label, run.upto, render_json(inv.document), inv.billed, inv.credits
    ):
        stored = run.ledger.get_invoice(cust, p.label)  # a concurrent run issued it first
        if stored is None:
            return InvoiceProblem(cust, f"invoice number {inv.number} is taken")
        return _summary(json.loads(stored), "already_issued", run.out_dir)
    INVOICES_ISSUED.inc()
    LATE_RECORDS.inc(inv.late_records)
    log.info(
        "billing.issued",
        invoice=inv.number,
        customer=cust,
        total=str(inv.total),
        amount_due=str(inv.amount_due),
        late_records=inv.late_records,
    )
    return _summary(inv.document, "issued", run.out_dir)


_Outcome = InvoiceSummary | InvoiceProblem | Notice


def _bill_customer(run: _Run, sub: Subscriber) -> list[_Outcome]:
    """``--period``: that period; preview: the open one; else every ended, unissued period."""
    if run.label is not None:
        res = _bill_period(run, sub, period_for_label(run.label, sub.anchor))
    elif run.preview:
        res = _bill_period(run, sub, period_containing(run.now, sub.anchor))
    else:
        return _bill_due(run, sub)
    return [] if res is None else [res]


def _bill_due(run: _Run, sub: Subscriber) -> list[_Outcome]:
    """Issue ``sub``'s due periods in order; stop at the first problem (order is kept)."""
    due = due_periods(sub, run.ledger, run.now, run.upto)
    out: list[_Outcome] = []
    for p in due:
        # Cancelled: no later period is billed either; one gate over the last due period
        # reports any unbilled usage up to its end, instead of one query per period.
        res = _bill_period(run, sub, due[-1] if sub.cancelled_before(p) else p)
        if res is not None:
            out.append(res)
        if res is None or isinstance(res, InvoiceProblem | Notice) or sub.cancelled_before(p):
            break
    return out


def _summary(
    doc: dict[str, object],
    status: Literal["issued", "already_issued", "preview"],
    out_dir: Path | None,
) -> InvoiceSummary:
    files = tuple(write_invoice_files(doc, out_dir)) if out_dir is not None else ()
    due = None if "amount_due" not in doc else Decimal(str(doc["amount_due"]))
    return InvoiceSummary(
        str(doc["number"]),
        str(doc["customer"]),
        str(doc["period"]),
        str(doc["currency"]),
        Decimal(str(doc["total"])),
        status,
        files,
        amount_due=due,
    )


def _unknown_customers(run: _Run, subs: SubscriptionSource, known: set[str]) -> list[str]:
    if run.label is not None:
        p = period_for_label(run.label, None)
        start_ms, end_ms = p.start_ms, p.end_ms
    else:  # the open calendar month (preview), or the last ended one up to now (due periods)
        p = period_containing(run.now, None)
        start_ms = (p if run.preview else p.previous(None)).start_ms
        end_ms = p.end_ms
    seen = run.ledger.customers_with_usage(start_ms, end_ms)
    return [c for c in seen if c not in known and subs.subscription(c) is None]


def _subscriptions(cfg: Config, clock: Callable[[], float]) -> SubscriptionSource:
    if cfg.store is None:
        return ConfigSubscriptions(cfg)
    return StoreSubscriptions(cfg.store.url, cfg, clock=clock)


def run_billing(
    cfg: Config,
    *,
    period: str | None,
    out_dir: Path | None,
    preview: bool,
    clock: Callable[[], float],
    subscriptions: SubscriptionSource | None = None,
    options: JobOptions | None = None,
) -> BillingResult:
    """Consume the meter, then issue (or preview) every customer's invoice for ``period``.

    ``period`` is ``YYYY-MM``. ``None`` means, when previewing, each customer's open period; when
    issuing, every period that has ended at ``clock()`` and is not issued yet, per customer
    (:func:`tollhouse.billing.due.due_periods`), so a re-run issues nothing new.
    Subscriptions: ``subscriptions``, else the entitlement store when ``cfg.store`` is set (read
    once, up front), else the config's customers.
    Files go to ``out_dir``, else ``cfg.billing.invoices_dir`` (previews: only with ``out_dir``).
    """
    opts = options or JobOptions()
    if period is not None:
        period_for_label(period, None)  # validates the label
    subs = subscriptions if subscriptions is not None else _subscriptions(cfg, clock)
    ledger = open_ledger(cfg.billing.ledger)
    try:
        consumed, dead = _consume(cfg, ledger, opts)
        target = out_dir if out_dir is not None or preview else cfg.billing.invoices_dir
        upto = ledger.max_seq() if preview else ledger.seal()  # later records: next gen
        run = _Run(cfg, ledger, period, clock(), preview, upto, target)
        roster = build_roster(subs, ledger.first_admissions(upto), ledger.first_invoices())
        invoices: list[InvoiceSummary] = []
        problems: list[InvoiceProblem] = []
        notices = list(roster.notices)
        for cust, sub in roster.entries:
            for res in (
                [InvoiceProblem(cust, "no subscription")]
                if sub is None
                else _bill_customer(run, sub)
            ):
                if isinstance(res, InvoiceProblem):
                    problems.append(res)
                elif isinstance(res, Notice):
                    notices.append(res)
                else:
                    invoices.append(res)
        for cust in _unknown_customers(run, subs, {c for c, _ in roster.entries}):
            problems.append(InvoiceProblem(cust, "usage from a customer with no subscription"))
    finally:
        ledger.close()
    if not preview:  # after the ledger holds them: an event never precedes its invoice
        from tollhouse.billing.invoice_events import emit_invoice_events

        emit_invoice_events(cfg, invoices, clock)
    _log_outcome(roster.default_plan, notices, problems)
    return BillingResult(
        consumed,
        dead,
        tuple(invoices),
        tuple(problems),
        roster.default_plan,
        tuple(sorted(notices, key=lambda n: n.customer)),
    )


def _log_outcome(
    defaults: tuple[Subscriber, ...], notices: list[Notice], problems: list[InvoiceProblem]
) -> None:
    for sub in defaults:
        log.info(
            "billing.default_plan_customer",
            customer=sub.id,
            plan=sub.changes[0].plan,
            since=iso_utc(sub.start_s),
        )
    for n in notices:
        log.warning("billing.not_invoiced", customer=n.customer, reason=n.message)
    for pr in problems:
        log.error("billing.problem", customer=pr.customer, problem=pr.message)
