"""Redis (meter and quota counters) killed mid-load and restarted without persistence (issue 17).

Same rig and invariant as ``test_faults_backends.py``: load through a real Envoy for bob (JWT,
plan pro, ``on_counter_error: fail_closed``) and globex (API key, enterprise, ``local``); Redis
is the meter (shared join) and the counters. Redis is SIGKILLed and started again, empty, on the
same port; the load goes on; then ``tollhouse bill --preview`` and the invariant.

This is a known loss (README, Reliability; docs/metering.md): the spool marks a fact done once
Redis accepted it, so what Redis held at the kill (final records in the meter stream not yet
consumed by a billing run, facts pending in the join) is gone and nothing sends it again. The
test measures the loss and asserts its documented bound from both sides:

- upper: every lost 200 is a request *sent before the kill* (only those can have facts Redis
  had accepted); every 200 sent after the kill is billed once, nothing is billed twice or
  without a 200;
- lower: every billable record that was in the meter stream a moment before the kill is lost
  (no billing run consumed it), so the loss is real and the exactness test is a strict xfail.

Why the previous version (in ``test_faults_backends.py``) timed out in full-suite runs: it split
"before" and "after" by the outcomes *recorded* when the kill returned. A request sent before
the kill whose reservation Redis had already accepted, but whose client answer came back after
that snapshot, counted as "after", was lost with Redis, and the wait for every "after" id in the
meter could only time out; under a loaded machine (slower round trips) that happened every few
runs. Here each 200 carries the monotonic time its request was sent, and the split is by that.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import LocalStack, redis_stream_records, wait_until
from tests.reliability.invariant import WINDOWS, Outcome, Verdict
from tests.reliability.rig import Load, fault_stack, judge, on_redis, quiesce
from tests.servers import RedisServer

pytestmark = pytest.mark.e2e  # starts a real Envoy

THREADS = 2  # one for bob, one for globex: enough for every path, light on a shared machine
OK_BEFORE = 20  # client 200s before the kill
STREAMED_BEFORE = 10  # records in the meter stream before the kill (the loss's lower bound)
OK_AFTER = 20  # client 200s after the restart
BOB_QUOTA = 400  # leases halve as it is spent: bob asks Redis again soon, and is refused


class TimedLoad(Load):
    """A :class:`Load` that keeps, for each 200, the monotonic time its request was sent."""

    def __init__(self, stack: LocalStack, threads: int) -> None:
        super().__init__(stack, threads)
        self.sent_at: dict[str, float] = {}
        self._sent_lock = threading.Lock()

    def _send(self, customer: str) -> Outcome:
        t0 = time.monotonic()
        got = super()._send(customer)
        if got.usage_id is not None:
            with self._sent_lock:
                self.sent_at[got.usage_id] = t0
        return got

    def __enter__(self) -> TimedLoad:
        super().__enter__()
        return self

    def ok_sent(self, *, before: float | None = None, after: float | None = None) -> set[str]:
        """Usage ids of the 200s whose request was sent before (or after) a monotonic time."""
        with self._sent_lock:
            items = list(self.sent_at.items())
        return {
            uid
            for uid, t in items
            if (before is None or t < before) and (after is None or t >= after)
        }


@dataclass(frozen=True)
class EmptyRestart:
    """What one run of 'Redis killed, restarted without persistence' measured."""

    verdict: Verdict
    ok: frozenset[str]  # every client 200's usage id
    sent_before: frozenset[str]  # 200s whose request was sent before the kill returned
    streamed_before: frozenset[str]  # billable 200s in the meter stream just before the kill
    lost: frozenset[str]  # client 200s with no billable record in the meter afterwards
    outage: tuple[Outcome, ...]  # what the clients saw while Redis was down

    def summary(self) -> str:
        return (
            f"{self.verdict.summary()} 200s sent before the kill={len(self.sent_before)} "
            f"in the meter stream at the kill={len(self.streamed_before)} "
            f"lost={len(self.lost)} (of them in the stream at the kill: "
            f"{len(self.lost & self.streamed_before)})"
        )


def _refused_closed(outcomes: list[Outcome]) -> int:
    return sum(
        1
        for o in outcomes
        if o.customer == "bob" and (o.status, o.tag) == (503, "counters_unavailable")
    )


def _down(load: Load) -> tuple[int, int]:
    """Under the outage: wait until fail_closed refused bob a few times; the outcomes' range."""
    start = load.count()
    wait_until(
        lambda: _refused_closed(load.snapshot()[start:]),
        lambda n: n >= 3,
        timeout_s=30,
        what="bob refused counters_unavailable while Redis is down",
    )
    return start, load.count()


def _streamed(url: str, ok: set[str]) -> set[str]:
    return {r.usage_id for r in redis_stream_records(url) if r.billable and r.usage_id in ok}


def _run(tmp: Path) -> EmptyRestart:
    redis_srv = RedisServer(tmp / "redis").start()
    try:
        with fault_stack(tmp / "stack", on_redis(redis_srv.url, BOB_QUOTA)) as stack:
            with TimedLoad(stack, THREADS) as load:
                load.ok_after(OK_BEFORE, "200s before the kill")
                streamed = wait_until(
                    lambda: _streamed(redis_srv.url, load.ok_sent()),
                    lambda got: len(got) >= STREAMED_BEFORE,
                    timeout_s=30,
                    what="client 200s billable in the meter stream",
                )
                redis_srv.kill()
                killed_at = time.monotonic()
                start, end = _down(load)
                redis_srv = RedisServer(redis_srv.dir, port=redis_srv.port).start()
                load.ok_after(OK_AFTER, "200s after Redis restarted empty")
            after = load.ok_sent(after=killed_at)
            wait_until(  # an event, not a count: every 200 sent after the kill is metered
                lambda: _streamed(redis_srv.url, after),
                lambda got: got >= after,
                timeout_s=30,
                what=f"the {len(after)} 200s sent after the kill in the meter",
            )
            quiesce(stack)
            billable = _streamed(redis_srv.url, load.ok_sent())
            v = judge(stack, load, tmp / "bill")  # after the read: the bill trims the stream
    finally:
        redis_srv.stop()
    ok = load.ok_sent()
    return EmptyRestart(
        v,
        frozenset(ok),
        frozenset(load.ok_sent(before=killed_at)),
        frozenset(streamed),
        frozenset(ok - billable),
        tuple(load.snapshot()[start:end]),
    )


@pytest.fixture(scope="module")
def empty_restart(tmp_path_factory: pytest.TempPathFactory) -> EmptyRestart:
    """Redis killed mid-load, restarted empty on the same port; load goes on; billed after."""
    run = _run(tmp_path_factory.mktemp("redis-empty"))
    print(run.summary())
    return run


def test_redis_restarted_empty_loses_only_what_it_had_accepted(empty_restart: EmptyRestart) -> None:
    """Redis killed and restarted without persistence: the loss, bounded from both sides.

    Nothing is billed twice or without a 200; the invoices agree with the meter; every 200 sent
    after the kill is billed; the lost 200s are all requests sent before the kill, and include
    every billable record the meter stream held just before it (no billing run had consumed it).
    While Redis was down bob (fail_closed) got 200 (leased) or 503 ``counters_unavailable``,
    and globex (local) kept getting 200s.
    """
    run = empty_restart
    v = run.verdict
    assert not any(v.window(w) for w in WINDOWS), run.summary()  # nothing billed without a 200
    assert v.billed == v.metered, run.summary()
    after = run.ok - run.sent_before
    assert len(after) >= OK_AFTER, run.summary()
    assert not after & run.lost, run.summary()
    assert run.lost <= run.sent_before, run.summary()
    assert run.streamed_before <= run.lost, run.summary()
    bob = {(o.status, o.tag if o.status != 200 else "") for o in run.outage if o.customer == "bob"}
    assert bob <= {(200, ""), (503, "counters_unavailable")}, bob
    assert {o.status for o in run.outage if o.customer == "globex"} <= {200}, run.summary()


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Redis restarted without persistence loses every record it had accepted: the meter "
        "stream and the join's pending facts are gone, and the spool had marked those facts "
        "done, so nothing sends them again. Bounded and measured by the test above; README, "
        "Reliability."
    ),
)
def test_redis_restarted_empty_bills_every_200(empty_restart: EmptyRestart) -> None:
    """The invariant itself after a Redis restart without persistence (fails today: a loss)."""
    empty_restart.verdict.assert_exact()
