"""The store CLI (`tollhouse store migrate`, `customers ...`, `keys ...`) on a SQLite store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tollhouse.store import SCHEMA_VERSION, hash_key
from tollhouse.store.cli import add_cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    """Run one command; return its exit code and parsed JSON output (or stderr text)."""
    parser = argparse.ArgumentParser(prog="tollhouse")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code = int(args.func(args))
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else err


def test_cli_manages_customers_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Migrate, create, change plan, issue and revoke a key, read the audit log from a config."""
    (tmp_path / "tollhouse.yaml").write_text(
        "plans: {free: {}, pro: {}}\nstore: {url: 'sqlite:///./store.db'}\n"
    )
    cfg = ["--config", str(tmp_path / "tollhouse.yaml")]
    code, out = run(capsys, "customers", "list", *cfg)
    assert code == 2
    assert "not migrated" in str(out)
    assert run(capsys, "store", "migrate", *cfg) == (0, {"schema_version": SCHEMA_VERSION})
    code, c = run(
        capsys,
        "customers",
        "create",
        "--name",
        "Acme",
        "--plan",
        "free",
        "--id",
        "acme",
        "--anchor",
        "2025-11-03",
        *cfg,
    )
    assert code == 0
    assert c["anchor"] == "2025-11-03"
    code, out = run(capsys, "customers", "plan", "acme", "gold", *cfg)
    assert code == 1
    assert "unknown_plan" in str(out)
    code, out = run(
        capsys, "customers", "plan", "acme", "pro", "--effective", "2020-01-01T00:00:00", *cfg
    )
    assert code == 1
    assert "effective_at_too_early" in str(out)
    code, c = run(capsys, "customers", "plan", "acme", "pro", *cfg)
    assert code == 0
    assert c["plan"] == "pro"
    code, k = run(capsys, "keys", "issue", "acme", *cfg)
    assert code == 0
    assert k["key"].startswith("th_")
    code, listed = run(capsys, "keys", "list", "acme", *cfg)
    assert hash_key(k["key"]) not in str(listed)
    assert k["key"] not in str(listed)
    code, r = run(capsys, "keys", "revoke", k["id"], *cfg)  # type: ignore[index]
    assert code == 0
    assert r["revoked_at"] is not None
    code, audit = run(capsys, "customers", "audit", *cfg)
    assert [a["action"] for a in audit] == [  # type: ignore[attr-defined]
        "customer.create",
        "subscription.change_plan",
        "key.issue",
        "key.revoke",
    ]
    assert {a["actor"] for a in audit} == {"cli"}  # type: ignore[attr-defined]
    assert (tmp_path / "store.db").exists()


def test_cli_store_url_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--store-url works without a config; status and overrides change; bad input exits non-zero."""
    url = ["--store-url", f"sqlite://{tmp_path}/s.db"]
    assert run(capsys, "store", "migrate", *url)[0] == 0
    assert (
        run(capsys, "customers", "create", "--name", "A", "--plan", "x", "--id", "a", *url)[0] == 0
    )
    code, c = run(capsys, "customers", "status", "a", "suspended", *url)
    assert code == 0
    assert c["status"] == "suspended"
    code, c = run(capsys, "customers", "override", "a", "requests", "10", *url)
    assert c["quota_overrides"] == {"requests": 10}  # type: ignore[index]
    code, c = run(capsys, "customers", "override", "a", "requests", "clear", *url)
    assert c["quota_overrides"] == {}  # type: ignore[index]
    code, t = run(capsys, "customers", "topup", "a", "requests", "5", *url)
    assert code == 0
    assert t["units"] == 5
    assert run(capsys, "customers", "get", "nobody", *url)[0] == 1
    assert run(capsys, "customers", "update", "a", "--metadata", "[1]", *url)[0] == 2
