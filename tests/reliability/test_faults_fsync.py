"""Slow fsync under load through a real Envoy (issue 17).

The slow disk is real for ``tollhouse serve`` only: an LD_PRELOAD shim (``slow_fsync.c``, built
here with the system's ``cc``; ``make sysdeps`` installs gcc) makes its ``fsync`` and
``fdatasync`` sleep before the real call, for as long as a control file says (read on each
call), so the test turns the slow disk on mid-load and off again without a restart. Envoy, the
upstream and the test itself are not slowed.

While fdatasync takes longer than ``check_deadline_ms`` (150 ms), a Check cannot have a durable
reservation in time: it must answer 503 ``deadline_exceeded`` (or Envoy answers its own 503 once
its 250 ms ext_authz timeout passes), never a 200; the reservation, if it lands later, is voided
in the same log. Fast again: 200s come back, and every 200 is billed once, nothing else is.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.harness import LocalStack, wait_until
from tests.reliability.rig import Load, fault_stack, verdict

pytestmark = pytest.mark.e2e  # starts a real Envoy

THREADS = 4
SLOW_MS = 400  # each fsync/fdatasync of serve, while slow: well past the 150 ms Check deadline
SHIM = Path(__file__).with_name("slow_fsync.c")


def _build_shim(out: Path) -> Path:
    """Compile the shim with the system's C compiler (a missing compiler fails: CI has gcc)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None, "no C compiler: `make sysdeps` installs gcc"
    lib = out / "slow_fsync.so"
    built = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(SHIM), "-ldl"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return lib


def _checks(stack: LocalStack, code: str) -> float:
    """``tollhouse_checks_total`` for one reason code, on serve's /metrics."""
    total = 0.0
    for line in stack.tollhouse.metrics().splitlines():
        if line.startswith("tollhouse_checks_total{") and f'code="{code}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_slow_fsync_is_deadline_503s_never_an_undurable_200(tmp_path: Path) -> None:
    """The fsync and fdatasync of serve slowed to 400 ms mid-load, then fast again.

    While slow: every answer is a 503 (tollhouse's ``deadline_exceeded``, or Envoy's own on its
    ext_authz timeout) or a 200 whose reservation was durable (the verdict shows each one
    billed); tollhouse counts the deadline refusals. Fast again: 200s come back without a
    restart, and every 200 is billed exactly once, no voided reservation billed: exact.
    """
    control = tmp_path / "fsync-delay-ms"
    control.write_text("0", encoding="utf-8")
    env = {"LD_PRELOAD": str(_build_shim(tmp_path)), "SLOW_FSYNC_CONTROL": str(control)}
    with fault_stack(tmp_path / "stack", serve_env=env) as stack:
        with Load(stack, THREADS) as load:
            load.ok_after(40, "200s before the disk slows")
            control.write_text(str(SLOW_MS), encoding="utf-8")
            start = load.count()
            wait_until(
                lambda: sum(1 for o in load.snapshot()[start:] if o.status == 503),
                lambda n: n >= 20,
                timeout_s=30,
                what="503s while fsync is slow",
            )
            end = load.count()
            refused = _checks(stack, "deadline_exceeded")
            control.write_text("0", encoding="utf-8")
            load.ok_after(40, "200s once fsync is fast again")
        v = verdict(stack, load, tmp_path / "bill")
    during = load.snapshot()[start:end]
    codes = Counter(o.tag if o.status != 200 else 200 for o in during)
    print(v.summary(), f"while slow: {len(during)} requests {dict(codes)}; deadline={refused}")
    assert {o.status for o in during} <= {200, 503}, codes
    assert set(codes) <= {200, "deadline_exceeded", ""}, codes
    assert codes["deadline_exceeded"] >= 1, codes
    assert refused >= codes["deadline_exceeded"], (refused, codes)
    v.assert_exact()
