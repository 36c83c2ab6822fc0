"""A hypothesis state machine: spool -> finaliser -> meter -> ledger -> invoice, crashing anywhere.

Rules drive the real pipeline in one process (:mod:`tests.reliability.pipeline`): reserve,
an access-log entry (served, upstream 5xx, Envoy's local reply), a void (Check deadline) or a
void by request id (no metadata), the clock forward or stepped back (NTP), the grace-period
sweep, a forward to the SQLite meter (optionally killed after the meter's commit and before the
ack), a crash between any two steps (torn tail or not), ``tollhouse bill`` (optionally killed
before or after a ledger commit), and ``settle`` (everything final, metered and invoiced).

A model of what each request deserves is checked after every step: the meter holds no pending
record and every row's state and ``billable`` are the model's (voided never billable, each usage
id once); after a drain the meter holds exactly the final records; every invoice of a period
counts exactly the billable metered records admitted in it (issued lines plus later
adjustments), so nothing is billed twice or into another period. The clock starts 20 minutes
before the November/December boundary, so the grace period and the clock steps cross it.

Two machines run the same rules: ``metering.process: inline`` (one spool joins what it writes)
and ``worker`` (serve's FactWriter, the worker's TailSpool, the real access-log decoder; grace
decisions not logged, so the model forgets an UNCONFIRMED the meter did not get before a crash).

Budget per machine: ``STATEFUL_EXAMPLES`` (default 25, derandomized: the same sequences every
CI run) x ``STATEFUL_STEPS`` (default 40), 7-20 s each here depending on the load;
``make fuzz`` runs 500 x 80 with fresh seeds.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from tests.reliability.pipeline import (
    CUSTOMERS,
    GRACE_S,
    PERIODS,
    BillCrash,
    Pipeline,
    period_of,
)
from tests.reliability.pipeline_worker import WorkerPipeline

EXAMPLES = int(os.environ.get("STATEFUL_EXAMPLES", "25"))
STEPS = int(os.environ.get("STATEFUL_STEPS", "40"))
START_S = datetime(2026, 11, 30, 23, 40, tzinfo=UTC).timestamp()

_OUTCOMES = {"ok": (200, True), "upstream_5xx": (502, True), "local_reply": (503, False)}
_BILL_CRASH = st.one_of(
    st.none(), st.tuples(st.sampled_from(["before_commit", "after_commit"]), st.integers(1, 3))
)


@dataclass(slots=True)
class Req:
    """What the model knows of one admitted request: its final state once decided."""

    usage_id: str
    request_id: str
    customer: str
    admitted_ms: int
    state: str | None = None
    billable: bool = False
    first_entry: tuple[str, bool] | None = None  # what the first access-log entry or void says


class MeteringMachine(RuleBasedStateMachine):
    """The pipeline plus the model of what every admitted request deserves."""

    reservations = Bundle("reservations")
    pipeline: type[Pipeline] = Pipeline

    def __init__(self) -> None:
        super().__init__()
        self.p = self.pipeline(START_S)
        self.worker = isinstance(self.p, WorkerPipeline)
        self.reqs: dict[str, Req] = {}
        self.n = 0

    def teardown(self) -> None:
        """Close everything and delete the files."""
        self.p.close()

    # ---- metering -----------------------------------------------------------------------------

    @rule(target=reservations, customer=st.sampled_from(CUSTOMERS))
    def reserve(self, customer: str) -> Req:
        """The Check admits a request (its reservation is durable)."""
        self.n += 1
        rec = self.p.reserve(customer, f"req-{self.n}")
        req = Req(rec.usage_id, rec.request_id, customer, rec.admitted_at_ms)
        self.reqs[req.usage_id] = req
        return req

    @rule(req=reservations, outcome=st.sampled_from(sorted(_OUTCOMES)))
    def access_log(self, req: Req, outcome: str) -> None:
        """Envoy's access-log entry for the request (a late one changes nothing)."""
        status, upstream = _OUTCOMES[outcome]
        self.p.served(req.usage_id, req.request_id, status, upstream)
        self._entry(req, "CONFIRMED" if upstream else "VOIDED", upstream and status < 500)

    @staticmethod
    def _entry(req: Req, state: str, billable: bool) -> None:
        if req.first_entry is None:
            req.first_entry = (state, billable)
        if req.state is None:
            req.state, req.billable = state, billable

    @rule(req=reservations, by_request_id=st.booleans())
    def void(self, req: Req, by_request_id: bool) -> None:
        """The Check gave up after its write, or Envoy logged the request without metadata."""
        if by_request_id:
            self.p.void_by_request(req.request_id)
        else:
            self.p.void(req.usage_id, req.request_id)
        self._entry(req, "VOIDED", False)

    @rule(seconds=st.integers(1, 2 * GRACE_S))
    def clock_forward(self, seconds: int) -> None:
        """Time passes (possibly past the grace period and the month boundary)."""
        self.p.now += seconds

    @rule(seconds=st.integers(1, 3 * GRACE_S))
    def clock_steps_back(self, seconds: int) -> None:
        """An NTP step sets the clock back (possibly across the month boundary)."""
        self.p.now -= seconds

    @rule()
    def sweep(self) -> None:
        """The grace-period sweep makes exactly the overdue pending reservations UNCONFIRMED."""
        got = {r.usage_id for r in self.p.sweep()}
        cutoff = self.p.now_ms - GRACE_S * 1000
        due = {
            r.usage_id for r in self.reqs.values() if r.state is None and r.admitted_ms <= cutoff
        }
        if self.worker:  # an UNCONFIRMED the meter had before a crash is decided again
            again = {u for u, r in self.reqs.items() if r.state == "UNCONFIRMED"}
            assert due <= got <= due | again, (got, due)
        else:
            assert got == due
        for uid in due:
            self.reqs[uid].state, self.reqs[uid].billable = "UNCONFIRMED", True

    @rule(crash_before_ack=st.booleans())
    def forward(self, crash_before_ack: bool) -> None:
        """One batch to the meter; the process may die after the meter's commit, before the ack."""
        self.p.forward(crash_before_ack=crash_before_ack)
        if crash_before_ack:
            self._forget_unlogged()

    @rule(torn=st.booleans())
    def crash(self, torn: bool) -> None:
        """SIGKILL between two steps (with a torn unacknowledged write or not), then restart."""
        self.p.crash(torn=torn)
        self._forget_unlogged()

    def _forget_unlogged(self) -> None:
        """The worker does not log grace decisions: those not in the meter are decided again.

        The replay joins the reservation with its first entry, if one came meanwhile.
        """
        if not self.worker:
            return
        metered = {r.usage_id for r in self.p.meter()}
        for r in self.reqs.values():
            if r.state == "UNCONFIRMED" and r.usage_id not in metered:
                r.state, r.billable = r.first_entry or (None, False)

    @rule()
    def drain(self) -> None:
        """Forward everything: the meter then holds exactly the final records."""
        self.p.drain()
        assert {r.usage_id for r in self.p.meter()} == self._final()

    # ---- billing ------------------------------------------------------------------------------

    @rule(crash_at=_BILL_CRASH)
    def bill(self, crash_at: tuple[str, int] | None) -> None:
        """``tollhouse bill`` (maybe killed at a ledger commit); invoices match the meter."""
        try:
            docs = self.p.bill(crash_at)
        except BillCrash:
            assert crash_at is not None
            return
        self._check_invoices(docs)

    @rule()
    def settle(self) -> None:
        """Past every grace period, swept, drained, billed: admitted == metered == billed."""
        latest = max((r.admitted_ms for r in self.reqs.values()), default=0) / 1000
        self.p.now = max(self.p.now, latest) + GRACE_S + 1
        self.sweep()
        self.drain()
        assert all(r.state is not None for r in self.reqs.values())
        self._check_invoices(self.p.bill())

    # ---- checks -------------------------------------------------------------------------------

    def _final(self) -> set[str]:
        return {u for u, r in self.reqs.items() if r.state is not None}

    @invariant()
    def meter_agrees_with_the_model(self) -> None:
        """No pending record in the meter; each row's state and billable are the model's."""
        seen: set[str] = set()
        for row in self.p.meter():
            req = self.reqs.get(row.usage_id)
            assert req is not None, row
            assert row.usage_id not in seen, row
            seen.add(row.usage_id)
            assert req.state is not None, f"pending record metered: {row}"
            assert (row.state, row.billable) == (req.state, req.billable), (row, req)
            assert (row.customer, row.admitted_at_ms) == (req.customer, req.admitted_ms)

    def _check_invoices(self, docs: dict[tuple[str, str], Any]) -> None:
        """Per customer and period: issued lines + later adjustments == billable metered."""
        metered: Counter[tuple[str, str | None]] = Counter(
            (r.customer, period_of(r.admitted_at_ms)) for r in self.p.meter() if r.billable
        )
        assert all(label is not None for _, label in metered), metered
        issued = self.p.issued()
        for cust in CUSTOMERS:
            for label in PERIODS:
                doc = docs[(cust, label)]
                if (cust, label) in issued:
                    assert doc == issued[(cust, label)]  # an issued invoice never changes
                # Usage of an issued period that reached the ledger after it was issued is an
                # adjustment on a later invoice (a preview before then counts it as its own).
                late = (
                    0
                    if (cust, label) not in issued
                    else sum(
                        a["quantity"]
                        for d in docs.values()
                        if d["customer"] == cust and d["period"] > label
                        for a in d["adjustments"]
                        if a["period"] == label and a["meter"] == "requests"
                    )
                )
                assert _requests(doc) + late == metered[(cust, label)], (cust, label, doc)


def _requests(doc: dict[str, Any]) -> int:
    return sum(int(ln["quantity"]) for ln in doc["lines"] if ln["meter"] == "requests")


MeteringMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize="STATEFUL_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow],
)


class TestPipelineUnderCrashes(MeteringMachine.TestCase):
    """Random steps and crashes never bill twice, never bill a void, never lose a reservation."""


class WorkerMachine(MeteringMachine):
    """The same rules with ``metering.process: worker``: serve's writer, the worker's tail."""

    pipeline = WorkerPipeline


WorkerMachine.TestCase.settings = MeteringMachine.TestCase.settings


class TestWorkerPipelineUnderCrashes(WorkerMachine.TestCase):
    """The worker split: crashes never bill twice, never bill a void, never lose a reservation."""
