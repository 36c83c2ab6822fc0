"""A full disk under load through a real Envoy, for the spool, the meter and the ledger (issue 17).

Each store sits on its own small tmpfs (mounted by the test: CI and developers run as root),
filled to the last byte mid-load with a filler file, then given its space back by deleting it:
a real ENOSPC on exactly that file system, nothing else touched. (``prlimit --fsize`` would
also limit ``serve``'s own log file, which is a regular file in the tests, and every other file
the process writes; a tmpfs scopes the fault to one store.) Judged by the invariant of
:mod:`tests.reliability.invariant`, like ``test_faults.py``.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import LocalStack, wait_until
from tests.reliability.rig import (
    BILL_ENV,
    Load,
    bill_command,
    fault_stack,
    run_bill,
    settle,
    verdict,
)

pytestmark = pytest.mark.e2e  # starts a real Envoy

THREADS = 4


@contextmanager
def _tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block (root needed: fail, never skip)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"a disk-full test mounts a tmpfs (as root): {done.stderr}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _fill(fs: Path) -> Path:
    """Write a filler file until the file system has not one byte left (ENOSPC)."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    chunk = 1 << 20
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return filler


def _metric(stack: LocalStack, name: str) -> float:
    """The sum of a family's samples on serve's /metrics (the worker's included)."""
    total = 0.0
    for line in stack.tollhouse.metrics().splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def _set(section: str, **values: Any) -> Any:
    def edit(config: dict[str, Any]) -> dict[str, Any]:
        return {**config, section: {**config[section], **values}}

    return edit


def test_spool_disk_full_is_503_never_an_unrecorded_200(tmp_path: Path) -> None:
    """The spool's file system fills up mid-load, then gets space back.

    While the fact log cannot write, the Check answers 503 (spool_unavailable, or Envoy's own
    503 once the replica reports not ready), never a 200 without a durable reservation; the
    write errors are counted. (The ``tollhouse_spool_writable`` gauge is not asserted: the
    writer retries on fresh segments while the disk is full, so it flips back and forth.)
    With space back the writer recovers on a fresh segment without a restart. Every 200 is
    billed once: exact.
    """
    with _tmpfs(tmp_path / "spoolfs") as fs:
        edit = _set("metering", spool=str(fs / "spool"))
        with fault_stack(tmp_path / "stack", edit) as stack:
            with Load(stack, THREADS) as load:
                load.ok_after(60, "200s before the disk fills")
                filler = _fill(fs)
                start = load.count()
                wait_until(
                    lambda: sum(1 for o in load.snapshot()[start:] if o.status == 503),
                    lambda n: n >= 20,
                    timeout_s=20,
                    what="503s while the spool is full",
                )
                errors = _metric(stack, "tollhouse_spool_write_errors_total")
                end = load.count()
                filler.unlink()
                load.ok_after(60, "200s once the spool has space again")
            v = verdict(stack, load, tmp_path / "bill")
    during = load.snapshot()[start:end]
    codes = Counter(o.tag if o.status != 200 else 200 for o in during)
    print(v.summary(), f"while full: {len(during)} requests {codes}; write_errors={errors}")
    assert {o.status for o in during} <= {200, 503}, codes  # each 200 was durable (verdict)
    assert errors >= 1
    v.assert_exact()


def test_meter_disk_full_fails_loudly_and_forwards_after(tmp_path: Path) -> None:
    """The SQLite meter's file system fills up mid-load, then gets space back.

    Checks do not depend on the meter: clients keep getting 200s, each reservation durable in
    the spool. The meter writes fail loudly (``tollhouse_meter_send_errors_total``, logged
    ``metering.forward_failed``) and are retried; with space back everything is forwarded,
    each record once: exact.
    """
    with _tmpfs(tmp_path / "meterfs") as fs:
        edit = _set("metering", meter=f"sqlite://{fs / 'meter.db'}")
        with fault_stack(tmp_path / "stack", edit) as stack:
            with Load(stack, THREADS) as load:
                load.ok_after(60, "200s before the disk fills")
                before = _metric(stack, "tollhouse_meter_send_errors_total")
                filler = _fill(fs)
                start = load.count()
                errors = wait_until(
                    lambda: _metric(stack, "tollhouse_meter_send_errors_total"),
                    lambda n: n > before,
                    timeout_s=20,
                    what="meter write errors while its disk is full",
                )
                load.ok_after(40, "200s while the meter's disk is full")
                end = load.count()
                filler.unlink()
                load.ok_after(40, "200s once the meter has space again")
            v = verdict(stack, load, tmp_path / "bill")
            logged = stack.tollhouse.log_path.read_text(encoding="utf-8", errors="replace")
    during = load.snapshot()[start:end]
    print(v.summary(), f"while full: {len(during)} requests, send errors {before} -> {errors}")
    assert {o.status for o in during} == {200}, {(o.status, o.tag) for o in during}
    assert "metering.forward_failed" in logged
    v.assert_exact()


def test_ledger_disk_full_fails_the_bill_loudly_then_bills_exactly(tmp_path: Path) -> None:
    """The SQLite ledger's file system is full when ``tollhouse bill`` runs, then has space.

    A first run consumed part of the load into the ledger; the run on the full disk fails
    loudly (exit 3, the ledger's URL and SQLite's error on stderr: ``database or disk is full``
    or ``disk I/O error``, by where the write hit the wall) and leaves nothing half-written;
    the next run, with space back, bills every 200 exactly once (none twice).
    """
    with _tmpfs(tmp_path / "ledgerfs") as fs:
        edit = _set("billing", ledger=f"sqlite://{fs / 'ledger.db'}")
        with fault_stack(tmp_path / "stack", edit) as stack:
            with Load(stack, THREADS) as load:
                load.ok_after(50, "200s for a first bill")
                run_bill(stack, tmp_path / "bill-1")  # the ledger holds these already
                load.ok_after(50, "200s for the bill on a full disk")
            settle(stack, load)
            filler = _fill(fs)
            failed = subprocess.run(
                bill_command(stack, tmp_path / "bill-full"),
                env=BILL_ENV,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            filler.unlink()
            v = verdict(stack, load, tmp_path / "bill")
    print(
        v.summary(),
        f"bill on a full disk: exit {failed.returncode}: {failed.stderr.strip()[-300:]}",
    )
    assert failed.returncode == 3, (failed.returncode, failed.stdout, failed.stderr[-2000:])
    assert "ledger.db" in failed.stderr, failed.stderr[-2000:]  # names the store that failed
    v.assert_exact()
