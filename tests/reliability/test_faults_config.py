"""A half-written config under load through a real Envoy (issue 17).

``tollhouse serve`` hot-reloads its config file once it has been unchanged for
``reload_settle_s`` (1 s). Here the file is rewritten in place and left cut off in the middle of
its ``customers`` mapping (as a writer that died mid-write leaves it: not YAML any more), long
enough for the reload to try it. The running snapshot must keep serving every customer; the
failed reload is reported (``config.reload_rejected`` in the log,
``tollhouse_config_reload_rejected_total`` on /metrics); the next good write (a new customer
and API key) is picked up; and the invariant holds over the whole run.
``tests/unit/test_serve_reload.py`` covers the settle rule on a bare serve process.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import LocalStack, wait_until
from tests.reliability.rig import Load, fault_stack, verdict
from tollhouse.keyhash import hash_api_key

pytestmark = pytest.mark.e2e  # starts a real Envoy

THREADS = 4
NEW = "initech"  # the customer the good write adds (plan pro, by API key)


def _metric(stack: LocalStack, name: str) -> float:
    """The sum of a family's samples on serve's /metrics."""
    total = 0.0
    for line in stack.tollhouse.metrics().splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def _write_half(path: Path) -> None:
    """Rewrite the config in place, cut off inside its customers (not YAML), mtime newer."""
    old = path.stat().st_mtime_ns
    text = path.read_text(encoding="utf-8")
    cut = text[: text.index("\ncustomers:") + 1] + "customers:\n  bob: {plan: pr"
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(cut)  # the premise: a reader of this file cannot load it
    path.write_text(cut, encoding="utf-8")
    new = max(old + 1_000_000_000, os.stat(path).st_mtime_ns)
    os.utime(path, ns=(new, new))


def _with_new_customer(config: dict[str, Any], key: str) -> dict[str, Any]:
    auth = dict(config["auth"])
    keys = dict(auth["api_keys"])
    keys["keys"] = [*keys["keys"], {"sha256": hash_api_key(key), "customer": NEW}]
    auth["api_keys"] = keys
    customers = {**config["customers"], NEW: {"plan": "pro"}}
    return {**config, "auth": auth, "customers": customers}


def test_half_written_config_keeps_the_old_snapshot_and_reports_it(tmp_path: Path) -> None:
    """A truncated config file mid-load: old snapshot serves, failure reported, next write used.

    While the file is cut off: bob (JWT) and globex (API key) keep getting 200s, the new key is
    still unknown (401), the rejection is logged and counted. The next good write adds a
    customer and key, which pass through Envoy. Every 200 billed once: exact.
    """
    key = "th_new_" + secrets.token_urlsafe(24)
    with fault_stack(tmp_path / "stack", lambda c: {**c, "reload_settle_s": 1.0}) as stack:
        serve = stack.tollhouse
        rejected0 = _metric(stack, "tollhouse_config_reload_rejected_total")
        with Load(stack, THREADS) as load:
            load.ok_after(40, "200s before the config is cut")
            _write_half(serve.config_path)
            start = load.count()
            wait_until(
                lambda: _metric(stack, "tollhouse_config_reload_rejected_total"),
                lambda n: n > rejected0,
                timeout_s=20,
                what="the half-written config's reload rejected",
            )
            load.wait_more(40, "requests while the config file is cut off")
            unknown = load.send_once(NEW, key)
            end = load.count()
            serve.rewrite_config(_with_new_customer(serve.config, key))
            wait_until(
                lambda: load.send_once(NEW, key).status,
                lambda s: s == 200,
                timeout_s=20,
                what="the new customer's key through Envoy after the good write",
            )
            load.ok_after(40, "200s after the good write")
        v = verdict(stack, load, tmp_path / "bill")
        logged = serve.log_path.read_text(encoding="utf-8", errors="replace")
    during = [o for o in load.snapshot()[start:end] if o.customer != NEW]
    print(v.summary(), f"while cut off: {len(during)} requests", f"new key: {unknown}")
    assert {o.status for o in during} == {200}, {(o.status, o.tag) for o in during}
    assert unknown.status == 401, unknown
    assert "config.reload_rejected" in logged
    assert key not in logged
    v.assert_exact()
    assert v.visible[NEW] > 0, v.summary()
