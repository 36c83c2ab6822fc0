"""`tollhouse check-config` with an entitlement store: every plan its customers are on is there.

The real console script against a migrated SQLite store with customers.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tollhouse.store import StoreService, migrate, open_store


def _config(tmp_path: Path, plans: list[str]) -> Path:
    doc = {
        "features": {"search": [{"methods": ["GET"], "path": "/v1/search"}]},
        "plans": {p: {"features": ["search"]} for p in plans},
        "store": {"url": "sqlite:///./store.db"},
        "metering": {"enabled": False},
    }
    path = tmp_path / "tollhouse.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _store(tmp_path: Path) -> None:
    async def make() -> None:
        url = f"sqlite://{tmp_path}/store.db"
        await migrate(url)
        svc = StoreService(await open_store(url), clock=time.time)
        for cid in ("acme", "beta"):
            await svc.create_customer(actor="test", name=cid, plan="pro", customer_id=cid)
        await svc.create_customer(actor="test", name="old", plan="legacy", customer_id="old")
        await svc.set_status("old", "cancelled", actor="test")
        await svc.backend.close()

    asyncio.run(make())


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "tollhouse"
    return subprocess.run(
        [str(exe), "check-config", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_plan_renamed_under_store_customers_fails_with_its_dotted_path(tmp_path: Path) -> None:
    """Plan pro renamed gold while acme and beta are on it: exit 1 naming plans.pro and them.

    A cancelled customer's plan (legacy) is not required.
    """
    _store(tmp_path)
    config = _config(tmp_path, ["free", "gold"])
    proc = _check(str(config))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        "plans.pro: not in this config, but 2 store customer(s) are on it (acme, beta)"
        in proc.stderr
    )
    assert "legacy" not in proc.stderr
    assert _check(str(_config(tmp_path, ["free", "pro"]))).returncode == 0


def test_no_store_skips_the_store_check(tmp_path: Path) -> None:
    """--no-store validates the file alone (e.g. in CI, before the store exists)."""
    _store(tmp_path)
    proc = _check("--no-store", str(_config(tmp_path, ["free", "gold"])))
    assert proc.returncode == 0, proc.stderr


def test_a_store_that_does_not_exist_is_a_warning_and_is_not_created(tmp_path: Path) -> None:
    """No store file yet: a warning that plans were not checked, exit 0, no file created."""
    proc = _check(str(_config(tmp_path, ["free"])))
    assert proc.returncode == 0, proc.stderr
    assert "plans not checked" in proc.stderr
    assert not (tmp_path / "store.db").exists()
