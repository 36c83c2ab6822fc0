"""The one invariant of the reliability suite: admitted == metered == billed, per customer.

A fault test collects three views of the same traffic and hands them to :func:`check`:

- what the **clients** saw (:class:`Outcome`: customer, status, and for a 200 the usage id the
  API received in ``x-tollhouse-usage-id``, echoed back by the upstream);
- what the **upstream** served (the usage ids it received: Envoy let those through);
- what the **meter** holds (final ``UsageRecord``s, duplicates allowed: the ledger dedupes) and
  what the **invoices** of ``tollhouse bill`` charge (the ``requests`` quantity per customer).

:func:`check` returns a :class:`Verdict` (a value, never an exception) with every discrepancy
classified. Exact means: for every customer, client 200s == billable metered usage ids ==
invoiced requests, every 200's usage id is metered billable (no 200 without a reservation), and
no billable record exists for a request whose client did not get a 200.

Two discrepancies have a known cause and are *windows*, not bugs; a test names the window it
allows and its bound (:meth:`Verdict.assert_within`):

- ``answer_lost``: billed, never reached the upstream, client got no 200. tollhouse wrote and
  fsynced the reservation, then died before Envoy got the OK; Envoy's own 503 access-log entry
  (which would void it) is dropped while its gRPC stream is down. Bound: Checks in flight.
- ``served_unseen``: billed, the upstream served it, the client got no 200 (a reset). Envoy died
  between forwarding and answering. Bound: requests in flight through Envoy.

Anything else (a 200 not billed, a billed id no one asked for, an invoice that disagrees with
the meter, a record billed twice on an invoice) is a ``violation`` and always fails.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tollhouse.metering.schema import UsageRecord

__all__ = ["WINDOWS", "Outcome", "Verdict", "check", "invoice_requests"]

WINDOWS = ("answer_lost", "served_unseen")
BILLABLE_STATES = (UsageRecord.CONFIRMED, UsageRecord.UNCONFIRMED)


@dataclass(frozen=True)
class Outcome:
    """One client request: who sent it, the status it saw (0: no response), the 200's usage id.

    ``tag`` is the usage id for a 200, else the problem code (``""``: Envoy's own reply, or a
    connection error for status 0).
    """

    customer: str
    status: int
    tag: str = ""

    @property
    def usage_id(self) -> str | None:
        return self.tag if self.status == 200 else None


@dataclass(frozen=True)
class Verdict:
    """Per-customer counts and every discrepancy, classified (window or violation)."""

    visible: Mapping[str, int]
    metered: Mapping[str, int]
    billed: Mapping[str, int]
    windows: Mapping[str, frozenset[str]] = field(default_factory=dict)
    violations: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        """True when nothing at all differs: no window used, no violation."""
        return not self.violations and not any(self.windows.values())

    def window(self, name: str) -> int:
        """How many usage ids fell in the named window."""
        return len(self.windows.get(name, frozenset()))

    def summary(self) -> str:
        wins = {name: self.window(name) for name in WINDOWS}
        return (
            f"visible={dict(self.visible)} metered={dict(self.metered)} "
            f"billed={dict(self.billed)} windows={wins} violations={list(self.violations)}"
        )

    def assert_exact(self) -> None:
        """Fail unless admitted == metered == billed with no window used."""
        assert self.exact, self.summary()

    def assert_within(self, **bounds: int) -> None:
        """No violation, and each named window used at most its bound (others: zero)."""
        unknown = set(bounds) - set(WINDOWS)
        assert not unknown, f"unknown windows {sorted(unknown)}"
        assert not self.violations, self.summary()
        for name in WINDOWS:
            assert self.window(name) <= bounds.get(name, 0), self.summary()


def invoice_requests(
    invoices: Iterable[Mapping[str, object]], meter: str = "requests"
) -> dict[str, int]:
    """The quantity each customer's invoice charges for ``meter`` (the sum over its tiers)."""
    out: dict[str, int] = {}
    for inv in invoices:
        lines = inv.get("lines") or []
        assert isinstance(lines, list)
        qty = sum(int(ln["quantity"]) for ln in lines if ln.get("meter") == meter)
        customer = str(inv["customer"])
        out[customer] = out.get(customer, 0) + qty
    return out


def check(
    outcomes: Iterable[Outcome],
    served: Iterable[str],
    records: Iterable[UsageRecord],
    billed: Mapping[str, int],
) -> Verdict:
    """Compare clients, upstream, meter and invoices; classify every difference.

    ``served``: usage ids the upstream received; ``records``: the meter's final records;
    ``billed``: :func:`invoice_requests` of the period's invoices (customers with traffic only).
    """
    outs = list(outcomes)
    ok_ids = {o.usage_id: o.customer for o in outs if o.usage_id is not None}
    violations: list[str] = []
    dup = [uid for uid, n in Counter(o.usage_id for o in outs if o.usage_id).items() if n > 1]
    if dup:
        violations.append(f"{len(dup)} usage ids given to two 200s: {sorted(dup)[:3]}")
    final: dict[str, UsageRecord] = {}
    for rec in records:
        final.setdefault(rec.usage_id, rec)
    billable = {
        uid: r.customer for uid, r in final.items() if r.billable and r.state in BILLABLE_STATES
    }
    violations += _admitted_not_billed(ok_ids, final, billable)
    windows = _extras(ok_ids, set(served), billable, violations)
    customers = sorted({o.customer for o in outs} | set(billable.values()))
    visible = {c: sum(1 for v in ok_ids.values() if v == c) for c in customers}
    metered = {c: sum(1 for v in billable.values() if v == c) for c in customers}
    invoiced = {c: int(billed.get(c, 0)) for c in customers}
    for c in customers:
        if invoiced[c] != metered[c]:
            violations.append(f"{c}: invoiced {invoiced[c]} != metered {metered[c]}")
    return Verdict(visible, metered, invoiced, windows, tuple(violations))


def _admitted_not_billed(
    ok_ids: Mapping[str, str], final: Mapping[str, UsageRecord], billable: Mapping[str, str]
) -> list[str]:
    """Every client 200 must be a billable record of the same customer."""
    out: list[str] = []
    missing = sorted(set(ok_ids) - set(final))
    if missing:
        out.append(f"{len(missing)} client 200s with no record in the meter: {missing[:3]}")
    unbilled = sorted(u for u in ok_ids if u in final and u not in billable)
    if unbilled:
        states = Counter(UsageRecord.State.Name(final[u].state) for u in unbilled)
        out.append(f"{len(unbilled)} client 200s metered but not billable: {dict(states)}")
    wrong = sorted(u for u, c in ok_ids.items() if u in billable and billable[u] != c)
    if wrong:
        out.append(f"{len(wrong)} 200s billed to another customer: {wrong[:3]}")
    return out


def _extras(
    ok_ids: Mapping[str, str], served: set[str], billable: Mapping[str, str], violations: list[str]
) -> dict[str, frozenset[str]]:
    """Billable records no client got a 200 for, by window (served upstream or not)."""
    extra = set(billable) - set(ok_ids)
    unseen = frozenset(extra & served)
    lost = frozenset(extra - served)
    stray = sorted(set(ok_ids) - served)
    if stray:
        violations.append(f"{len(stray)} client 200s the upstream never served: {stray[:3]}")
    return {"answer_lost": lost, "served_unseen": unseen}
