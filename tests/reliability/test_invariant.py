"""The invariant checker itself: it must see every kind of discrepancy a fault can cause."""

from __future__ import annotations

from tests.reliability.invariant import Outcome, check, invoice_requests
from tollhouse.metering.schema import UsageRecord


def _rec(
    uid: str, customer: str, state: UsageRecord.State = UsageRecord.CONFIRMED, billable: bool = True
) -> UsageRecord:
    return UsageRecord(usage_id=uid, customer=customer, state=state, billable=billable)


def _invoice(customer: str, *quantities: int) -> dict[str, object]:
    return {
        "customer": customer,
        "lines": [{"meter": "requests", "quantity": q} for q in quantities],
    }


OUTS = [
    Outcome("bob", 200, "u1"),
    Outcome("bob", 200, "u2"),
    Outcome("globex", 200, "u3"),
    Outcome("bob", 503, "deadline_exceeded"),
    Outcome("globex", 0, "ConnectionResetError"),
]
SERVED = ["u1", "u2", "u3"]
RECORDS = [_rec("u1", "bob"), _rec("u2", "bob", UsageRecord.UNCONFIRMED), _rec("u3", "globex")]


def test_exact_traffic_is_exact() -> None:
    """200s == billable records (CONFIRMED + UNCONFIRMED, duplicates once) == invoice lines."""
    v = check(OUTS, SERVED, [*RECORDS, RECORDS[0]], {"bob": 2, "globex": 1})
    assert v.exact, v.summary()
    assert (dict(v.visible), dict(v.metered)) == ({"bob": 2, "globex": 1},) * 2


def test_a_200_without_a_record_is_a_violation() -> None:
    """A client 200 whose usage id never reached the meter fails, whatever the bounds."""
    v = check(OUTS, SERVED, RECORDS[:2], {"bob": 2})
    assert any("no record in the meter" in s for s in v.violations)
    assert not v.exact


def test_a_voided_200_is_a_violation() -> None:
    """A client 200 metered VOIDED (not billable) is a lost bill."""
    records = [RECORDS[0], _rec("u2", "bob", UsageRecord.VOIDED, billable=False), RECORDS[2]]
    v = check(OUTS, SERVED, records, {"bob": 1, "globex": 1})
    assert any("not billable" in s for s in v.violations)


def test_invoice_disagreeing_with_the_meter_is_a_violation() -> None:
    """An invoice quantity that differs from the metered units fails (billed twice, or lost)."""
    v = check(OUTS, SERVED, RECORDS, {"bob": 3, "globex": 1})
    assert v.violations == ("bob: invoiced 3 != metered 2",)


def test_extras_are_classified_into_windows() -> None:
    """Billed without a client 200: served upstream -> served_unseen, else answer_lost."""
    records = [*RECORDS, _rec("x1", "bob", UsageRecord.UNCONFIRMED), _rec("x2", "globex")]
    v = check(OUTS, [*SERVED, "x2"], records, {"bob": 3, "globex": 2})
    assert not v.violations
    assert (v.window("answer_lost"), v.window("served_unseen")) == (1, 1)
    v.assert_within(answer_lost=1, served_unseen=1)
    assert not v.exact


def test_a_200_the_upstream_never_served_is_a_violation() -> None:
    """A usage id in a client 200 that the API never received means the view is wrong."""
    v = check(OUTS, SERVED[:2], RECORDS, {"bob": 2, "globex": 1})
    assert any("never served" in s for s in v.violations)


def test_invoice_requests_sums_tiers_of_the_requests_meter() -> None:
    """Graduated tiers are several lines of one meter; other meters are not counted."""
    invoices: list[dict[str, object]] = [
        _invoice("bob", 2, 5),
        {"customer": "globex", "lines": [{"meter": "tokens", "quantity": 9}]},
    ]
    assert invoice_requests(invoices) == {"bob": 7, "globex": 0}
