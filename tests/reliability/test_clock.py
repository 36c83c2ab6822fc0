"""Clock jumps around a billing period boundary (tests/reliability).

End to end (``test_month_boundary_end_to_end``): ``tollhouse serve`` and its metering worker run
under libfaketime (``LD_PRELOAD``, Debian's ``faketime`` package) with their clock set 15 s
before the start of the current UTC month, behind a real Envoy, under steady load across the
boundary; ``tollhouse bill --preview`` then prices both months from the real meter.

Component level (the in-process pipeline of :mod:`tests.reliability.pipeline`, injected
clock): an NTP step back across the boundary, before and after the earlier month was issued,
and a forward step longer than the grace period. libfaketime 0.9.10 cannot step one running
process's clock back safely (a changed ``FAKETIME_TIMESTAMP_FILE`` is not re-read reliably, and
with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` Python's ``time.sleep`` fails with EINVAL), so the steps
are tested with the injected clock, which is what the code reads.
"""

from __future__ import annotations

import glob
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.harness import upstream_saw, usage_ids_seen, wait_until
from tests.reliability.invariant import check, invoice_requests
from tests.reliability.pipeline import GRACE_S, Pipeline, period_of
from tests.reliability.rig import Load, fault_stack, meter_records, run_bill, settle

LEAD_S = 15  # the faked clock starts this long before the boundary
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def _libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is missing: run `make sysdeps` (Debian package faketime)")
    return found[0]


def _month_start(ts: float) -> datetime:
    now = datetime.fromtimestamp(ts, UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def _label(d: datetime) -> str:
    return f"{d.year:04d}-{d.month:02d}"


def _previous(d: datetime) -> datetime:
    return datetime(d.year - (d.month == 1), 12 if d.month == 1 else d.month - 1, 1, tzinfo=UTC)


@pytest.mark.e2e  # starts a real Envoy
def test_month_boundary_end_to_end(tmp_path: Path) -> None:
    """Requests just before and just after a month boundary land in their own month's invoice.

    serve's clock (libfaketime, a fixed offset) crosses 00:00:00 UTC of the 1st under load;
    each month's invoice counts exactly the 200s admitted in it, and together they bill every
    client 200 once (admitted == metered == billed).
    """
    boundary = _month_start(time.time())
    offset = int(boundary.timestamp() - LEAD_S - time.time())
    env = {"LD_PRELOAD": _libfaketime(), "FAKETIME": f"{offset:+d}"}

    def fake_now() -> float:
        return time.time() + offset

    edge = boundary.timestamp()
    with fault_stack(tmp_path / "stack", serve_env=env) as stack:
        assert fake_now() < edge - 2, "the stack took too long to start: raise LEAD_S"
        with Load(stack, 4, customers=("globex",)) as load:  # an API key: no JWT times
            wait_until(
                fake_now,
                lambda t: t >= edge + 4,
                timeout_s=LEAD_S + 15,
                interval_s=0.2,
                what="the faked clock past the boundary",
            )
        settle(stack, load)
        months = [_previous(boundary), boundary]
        invoices = {
            _label(m): run_bill(stack, tmp_path / _label(m), period=_label(m)) for m in months
        }
        served = usage_ids_seen(stack.upstream, load.case)
        assert len(upstream_saw(stack.upstream, load.case)) == len(served)
        records = [r for r in meter_records(stack) if r.customer == "globex"]
    v = check(
        load.snapshot(),
        served,
        records,
        invoice_requests(i for docs in invoices.values() for i in docs),
    )
    v.assert_exact()
    edge_ms = int(edge * 1000)
    assert all(abs(r.admitted_at_ms - edge_ms) < 120_000 for r in records), "faketime not applied"
    by_month = Counter(
        _label(boundary) if r.admitted_at_ms >= edge_ms else _label(months[0])
        for r in records
        if r.billable
    )
    print(v.summary(), dict(by_month))  # shown with pytest -rP
    assert by_month[_label(months[0])] > 0, by_month
    assert by_month[_label(boundary)] > 0, by_month
    for label, docs in invoices.items():
        assert invoice_requests(docs).get("globex", 0) == by_month[label], (label, by_month)


def _requests(doc: dict[str, object], period: str | None = None) -> int:
    lines = doc["adjustments"] if period else doc["lines"]
    assert isinstance(lines, list)
    return sum(
        int(ln["quantity"])
        for ln in lines
        if ln["meter"] == "requests" and (period is None or ln["period"] == period)
    )


def test_ntp_step_back_across_the_boundary_bills_each_request_once() -> None:
    """An NTP step back across the boundary bills each request once, in its admission month.

    The clock steps from 00:00:05 back to 23:59:55 between two requests; a reservation pending
    across the step is still finalised once.
    """
    p = Pipeline(DEC_1 + 5)
    try:
        december = p.reserve("acme", "r-dec")  # admitted 00:00:05 (Dec)
        p.now = DEC_1 - 5  # the NTP step: back 10 s, into November
        november = p.reserve("acme", "r-nov")  # admitted 23:59:55 (Nov)
        p.served(december.usage_id, "r-dec", 200, True)
        p.served(december.usage_id, "r-dec", 200, True)  # a duplicate entry: nothing changes
        p.now = DEC_1 + GRACE_S  # past november's grace, not past december's (its entry came)
        assert [r.usage_id for r in p.sweep()] == [november.usage_id]
        p.drain()
        assert {r.usage_id: period_of(r.admitted_at_ms) for r in p.meter()} == {
            december.usage_id: "2026-12",
            november.usage_id: "2026-11",
        }
        docs = p.bill()  # issues November (it has ended), previews December
        assert docs[("acme", "2026-11")]["status"] == "issued"
        assert _requests(docs[("acme", "2026-11")]) == 1
        assert _requests(docs[("acme", "2026-12")]) == 1
        assert _requests(docs[("acme", "2026-12")], "2026-11") == 0
    finally:
        p.close()


def test_step_back_after_the_month_was_issued_is_an_adjustment_not_a_changed_invoice() -> None:
    """Usage admitted "in November" after November was issued is a December adjustment.

    November is issued at 00:01; the clock then steps back to 23:59:59 and a request is admitted:
    it is billed once, as a late adjustment on December's invoice; November's never changes.
    """
    p = Pipeline(DEC_1 + 60)
    try:
        first = p.bill()
        issued = first[("acme", "2026-11")]
        assert issued["status"] == "issued"
        assert _requests(issued) == 0
        p.now = DEC_1 - 1  # the step back
        late = p.reserve("acme", "r-late")
        p.served(late.usage_id, "r-late", 200, True)
        p.drain()
        docs = p.bill()
        assert docs[("acme", "2026-11")] == issued  # an issued invoice never changes
        dec = docs[("acme", "2026-12")]
        assert _requests(dec) == 0
        assert _requests(dec, "2026-11") == 1  # billed once, as November's late usage
    finally:
        p.close()


def test_forward_step_longer_than_the_grace_bills_pending_reservations_unconfirmed() -> None:
    """A forward step past the grace bills in-flight reservations UNCONFIRMED, once.

    The named window of a forward step: a reservation whose access-log entry is still in
    flight when the clock jumps past its grace is billed UNCONFIRMED; the late void (Envoy's
    own 503) changes nothing. Bound: requests whose entry was in flight at the step.
    """
    p = Pipeline(DEC_1 - 10)
    try:
        rec = p.reserve("acme", "r-1")
        p.now += GRACE_S + 3600  # an NTP step forward of an hour
        assert [r.usage_id for r in p.sweep()] == [rec.usage_id]
        p.served(rec.usage_id, "r-1", 503, False)  # Envoy's own 503, arriving after the step
        p.drain()
        rows = p.meter()
        assert [(r.state, r.billable) for r in rows] == [("UNCONFIRMED", True)]
        assert _requests(p.bill()[("acme", "2026-11")]) == 1
    finally:
        p.close()
