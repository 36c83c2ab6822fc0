"""What a hot reload may change: the settle time of a changed file, and the start-only keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tollhouse.config import ConfigError, parse_config
from tollhouse.config.reload import (
    START_ONLY,
    SettledFiles,
    keep_start_only,
    restart_needed,
)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _touch(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_change_is_due_only_after_it_stayed_unchanged_for_the_settle_time(
    tmp_path: Path,
) -> None:
    """A half-written file is held back; every further write restarts the settle time.

    The change is due once the file has shown the same signature for settle_s, and only once.
    """
    f = tmp_path / "t.yaml"
    _touch(f, "a: 1\n", 1_000_000_000)
    clock = Clock()
    watch = SettledFiles(lambda: [f], lambda: 1.0, clock=clock)
    assert not watch.poll()
    assert not watch.pending
    _touch(f, "plans:\n", 2_000_000_000)  # the first half of a write
    assert not watch.poll()
    assert watch.pending
    clock.now += 0.9
    _touch(f, "plans: {free: {}}\n", 3_000_000_000)  # the rest, 0.9 s later
    assert not watch.poll()
    clock.now += 0.9  # 1.8 s after the first write, 0.9 s after the last
    assert not watch.poll()
    clock.now += 0.1
    assert watch.poll()
    assert not watch.pending
    clock.now += 10
    assert not watch.poll()


def test_a_change_undone_before_it_settles_is_never_due(tmp_path: Path) -> None:
    """Writing a file and putting the very same bytes and mtime back: nothing to apply."""
    f = tmp_path / "t.yaml"
    _touch(f, "a: 1\n", 1_000_000_000)
    clock = Clock()
    watch = SettledFiles(lambda: [f], lambda: 1.0, clock=clock)
    _touch(f, "a: 22\n", 2_000_000_000)
    assert not watch.poll()
    _touch(f, "a: 1\n", 1_000_000_000)
    assert not watch.poll()
    clock.now += 5
    assert not watch.poll()


def test_a_vanished_file_and_settle_zero(tmp_path: Path) -> None:
    """A removed file is a change like any other; with settle 0 it is due at the first poll."""
    f = tmp_path / "t.yaml"
    _touch(f, "a: 1\n", 1_000_000_000)
    watch = SettledFiles(lambda: [f], lambda: 0.0, clock=Clock())
    f.unlink()
    assert watch.poll()


def test_reload_settle_s_is_validated() -> None:
    """reload_settle_s defaults to 1 s and may not be negative (dotted path in the error)."""
    assert parse_config({}).reload_settle_s == 1.0
    with pytest.raises(ConfigError) as e:
        parse_config({"reload_settle_s": -1})
    assert e.value.problems[0][0] == "reload_settle_s"


def test_start_only_keys_keep_their_running_value_and_are_reported() -> None:
    """Changes to store, admin, metering.spool, counters and listen are listed, not applied.

    The catalog change in the same file, and a live metering key, are applied.
    """
    running = parse_config({"plans": {"free": {}}, "counters": "memory"})
    new = parse_config(
        {
            "plans": {"free": {}, "pro": {}},
            "listen": "127.0.0.1:7001",
            "counters": "redis://127.0.0.1:6379/0",
            "store": {"url": "sqlite:///x.db"},
            "admin": {"token_file": "/run/admin-token"},
            "metering": {"spool": "/elsewhere", "bill_unconfirmed": False},
        }
    )
    assert restart_needed(running, new) == [
        "listen",
        "counters",
        "store",
        "admin",
        "metering.spool",
    ]
    applied = keep_start_only(running, new)
    assert set(applied.plans) == {"free", "pro"}
    assert applied.metering.bill_unconfirmed is False  # a live key: applied
    assert restart_needed(running, applied) == []
    assert {"store", "admin", "counters", "listen", "metering.spool"} <= set(START_ONLY)
    assert applied.store is None
    assert applied.admin.token_file is None
    assert applied.counters == "memory"
