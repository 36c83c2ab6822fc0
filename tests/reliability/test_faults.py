"""Faults under load through a real Envoy, each judged by the one invariant (tests/reliability).

Every test runs steady load for two customers (a JWT one and an API-key one) through a real
Envoy and ``tollhouse serve`` with its metering worker, injects one fault, lets the stack
recover, bills the month with ``tollhouse bill --preview`` on the real meter and checks, per
customer: client 200s == billable metered usage ids == invoiced requests
(:mod:`tests.reliability.invariant`). The only differences allowed are the two named windows,
each bounded by what can be in flight (the load's threads).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration.harness import wait_until, worker_pid
from tests.reliability.rig import Load, fault_stack, verdict

pytestmark = pytest.mark.e2e  # starts a real Envoy

THREADS = 4


def test_no_fault_is_exact(tmp_path: Path) -> None:
    """Steady load, no fault: admitted == metered == billed exactly, for both customers."""
    with fault_stack(tmp_path / "stack") as stack:
        with Load(stack, THREADS) as load:
            load.ok_after(80, "200s under steady load")
        v = verdict(stack, load, tmp_path / "bill")
    print(v.summary())  # the measured windows, shown with pytest -rP
    v.assert_exact()
    assert all(n > 0 for n in v.visible.values()), v.summary()


def test_sigkill_of_serve_bills_every_200_and_at_most_the_checks_in_flight(
    tmp_path: Path,
) -> None:
    """SIGKILL of ``tollhouse serve`` mid-load, then a restart on the same ports.

    Every client 200 is billed once. Extra billed records are only the ``answer_lost`` window:
    reservations fsynced whose OK never reached Envoy (at most one per load thread in flight).
    """
    with fault_stack(tmp_path / "stack") as stack:
        with Load(stack, THREADS) as load:
            load.ok_after(60, "200s before the kill")
            stack.tollhouse.kill()
            load.wait_more(10, "requests while serve is down")
            stack.tollhouse.start()
            load.ok_after(60, "200s after the restart")
        v = verdict(stack, load, tmp_path / "bill")
    print(v.summary())  # the measured windows, shown with pytest -rP
    v.assert_within(answer_lost=THREADS)
    assert sum(v.visible.values()) >= 120, v.summary()


def test_sigkill_of_the_metering_worker_is_exact(tmp_path: Path) -> None:
    """SIGKILL of the metering worker mid-load: serve starts a new one; nothing differs at all."""
    with fault_stack(tmp_path / "stack") as stack:
        with Load(stack, THREADS) as load:
            load.ok_after(60, "200s before the kill")
            os.kill(worker_pid(stack), signal.SIGKILL)
            load.ok_after(60, "200s after the kill")
        v = verdict(stack, load, tmp_path / "bill")
    print(v.summary())  # the measured windows, shown with pytest -rP
    v.assert_exact()


def test_sigterm_of_serve_drains_and_is_exact(tmp_path: Path) -> None:
    """SIGTERM of serve mid-load (a rolling restart): it drains, restarts, and nothing differs.

    Requests refused while it is down are Envoy's 503s (never 200s), and none is billed.
    """
    with fault_stack(tmp_path / "stack") as stack:
        with Load(stack, THREADS) as load:
            load.ok_after(60, "200s before SIGTERM")
            assert stack.tollhouse.stop() == 0
            load.wait_more(10, "requests while serve is down")
            stack.tollhouse.start()
            load.ok_after(60, "200s after the restart")
        v = verdict(stack, load, tmp_path / "bill")
    print(v.summary())  # the measured windows, shown with pytest -rP
    v.assert_within(answer_lost=THREADS)
    refused = {o.status for o in load.snapshot() if o.status != 200}
    assert refused <= {503}, refused


def test_envoy_sigkill_bills_at_most_the_requests_in_flight(tmp_path: Path) -> None:
    """SIGKILL of Envoy mid-load, then a restart: every 200 billed once.

    Extra billed records are only ``served_unseen`` (the upstream served them, the client got
    a reset) or ``answer_lost``, together at most the requests in flight.
    """
    with fault_stack(tmp_path / "stack") as stack:
        with Load(stack, THREADS) as load:
            load.ok_after(60, "200s before the kill")
            stack.envoy.kill()
            load.wait_more(10, "requests while Envoy is down")
            stack.envoy.start()
            wait_until(lambda: stack.envoy.running, bool, what="Envoy running again")
            load.ok_after(60, "200s after Envoy's restart")
        v = verdict(stack, load, tmp_path / "bill")
    print(v.summary())  # the measured windows, shown with pytest -rP
    v.assert_within(served_unseen=THREADS, answer_lost=THREADS)
