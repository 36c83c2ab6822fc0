"""`tollhouse usage` and `tollhouse bill` on a corrupt meter: one line, exit 3, no traceback.

The real console script runs as a subprocess against a config in a temporary folder.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.servers import free_port
from tollhouse.cli import EXIT_DATA
from tollhouse.metering.schema import METER_SQLITE_DDL


def _config(tmp_path: Path) -> Path:
    doc = {
        "plans": {"free": {}},
        "customers": {"acme": {"plan": "free"}},
        "metering": {"spool": "spool", "meter": "sqlite:///./meter.db"},
        "billing": {"ledger": "sqlite:///./ledger.db", "invoices_dir": "invoices"},
    }
    path = tmp_path / "tollhouse.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "tollhouse"
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _malformed(path: Path) -> None:
    """A real meter database whose table pages were overwritten in the middle of the file."""
    with sqlite3.connect(path) as conn:
        conn.executescript(METER_SQLITE_DDL)
        conn.executemany(
            "INSERT INTO usage (usage_id, customer, plan, feature, state, billable,"
            " admitted_at_ms, finalized_at_ms, record) VALUES (?, 'acme', 'free', 'f',"
            " 'CONFIRMED', 1, ?, ?, ?)",
            [
                (f"u{i:06d}", 1_700_000_000_000 + i, 1_700_000_000_000 + i, b"x" * 200)
                for i in range(3000)
            ],
        )
    conn.close()
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * (size // 4))


@pytest.mark.parametrize("damage", [_garbage, _malformed])
@pytest.mark.parametrize(
    "command",
    [
        ["usage", "--since", "2023-01-01"],
        ["usage", "--since", "2023-01-01", "--reconcile"],
        ["bill"],
    ],
)
def test_corrupt_meter_is_one_line_and_exit_3(
    tmp_path: Path, damage: object, command: list[str]
) -> None:
    """Garbage or a damaged page in the SQLite meter: exit 3 and one stderr line naming it."""
    config = _config(tmp_path)
    damage(tmp_path / "meter.db")  # type: ignore[operator]
    proc = _run(*command, "--config", str(config))
    assert proc.returncode == EXIT_DATA == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tollhouse ")]
    assert len(errors) == 1, proc.stderr
    assert "cannot read sqlite:///" in errors[0]
    assert f"{tmp_path.name}/meter.db: " in errors[0]
    assert "ledger.db" not in errors[0]


def test_healthy_meter_still_exits_0(tmp_path: Path) -> None:
    """The same commands on an empty folder (no meter yet) work as before: exit 0."""
    config = _config(tmp_path)
    for command in (["usage"], ["usage", "--reconcile"]):
        proc = _run(*command, "--config", str(config))
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["usage"], ["bill"]])
def test_unreachable_redis_meter_is_exit_3_without_its_password(
    tmp_path: Path, command: list[str]
) -> None:
    """A Redis meter nobody listens on: exit 3, one line naming it, the URL's password masked."""
    config = _config(tmp_path)
    doc = yaml.safe_load(config.read_text())
    doc["metering"]["meter"] = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    config.write_text(yaml.safe_dump(doc))
    proc = _run(*command, "--config", str(config))
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tollhouse ")]
    assert len(errors) == 1, proc.stderr
    assert "cannot read redis://:***@127.0.0.1:" in errors[0]
    assert "ledger" not in errors[0]
