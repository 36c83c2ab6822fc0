"""The invariant checker itself: it must pass exact traffic and catch each kind of discrepancy."""

from __future__ import annotations

from tests.reliability.invariant import Outcome, check, invoice_requests
from tollhouse.metering.schema import UsageRecord


def _rec(uid: str, customer: str,
         state: UsageRecord.State = UsageRecord.CONFIRMED) -> UsageRecord:
    return UsageRecord(usage_id=uid, customer=customer, state=state, billable=True)


def test_exact_traffic_is_exact() -> None:
    """Two 200s served, metered and invoiced for the same customer give an exact verdict."""
    outs = [Outcome("c1", 200, "u1"), Outcome("c1", 200, "u2"), Outcome("c1", 429, "quota")]
    v = check(outs, ["u1", "u2"], [_rec("u1", "c1"), _rec("u2", "c1")], {"c1": 2})
    assert v.exact, v.summary()
    assert (v.visible["c1"], v.metered["c1"], v.billed["c1"]) == (2, 2, 2)


def test_200_without_record_is_a_violation() -> None:
    """A client 200 the meter never recorded is a violation, not a window."""
    v = check([Outcome("c1", 200, "u1")], ["u1"], [], {})
    assert any("no record" in s for s in v.violations), v.summary()


def test_billed_but_not_answered_is_a_named_window() -> None:
    """A billable record with no client 200 is answer_lost (not served) or served_unseen."""
    recs = [_rec("u1", "c1"), _rec("u2", "c1")]
    v = check([Outcome("c1", 0), Outcome("c1", 0)], ["u2"], recs, {"c1": 2})
    assert not v.violations, v.summary()
    assert (v.window("answer_lost"), v.window("served_unseen")) == (1, 1)


def test_invoice_disagreeing_with_meter_is_a_violation() -> None:
    """An invoice quantity other than the billable metered count is a violation."""
    v = check([Outcome("c1", 200, "u1")], ["u1"], [_rec("u1", "c1")], {"c1": 2})
    assert any("invoiced 2 != metered 1" in s for s in v.violations), v.summary()


def test_invoice_requests_sums_tiers_of_the_meter() -> None:
    """invoice_requests sums the quantity of every line of the named meter per customer."""
    invs = [{"customer": "c1", "lines": [{"meter": "requests", "quantity": 3},
                                         {"meter": "requests", "quantity": 4},
                                         {"meter": "tokens", "quantity": 9}]}]
    assert invoice_requests(invs) == {"c1": 7}
