"""`tollhouse serve` as a real process: readiness and the spool, hot reload of the config file.

Each test runs the console script with its log (JSON lines) in a file, and reads /readyz and
/metrics over HTTP, as an operator or Kubernetes would.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers import free_port, wait_port
from tollhouse import devkeys
from tollhouse.store import StoreService, migrate, open_store

pytestmark = pytest.mark.component  # runs `tollhouse serve` as a process


def _doc(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(devkeys.generate_ec("k1"))))
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "auth": {
            "jwt": [
                {"issuer": "https://issuer.example", "audiences": ["api"], "jwks_file": "jwks.json"}
            ]
        },
        "features": {"search": [{"methods": ["GET"], "path": "/v1/search"}]},
        "plans": {"free": {"features": ["search"]}, "pro": {"features": ["search"]}},
        "customers": {"acme": {"plan": "pro"}},
        "metering": {"spool": "spool", "meter": "sqlite:///./meter.db"},
        "shutdown_grace_s": 1,
        **extra,
    }


class Serve:
    """A running `tollhouse serve` with its stderr in ``log``."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.doc = yaml.safe_load(config.read_text())
        self.log = config.parent / "serve.log"
        exe = Path(sys.executable).parent / "tollhouse"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [str(exe), "serve", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=err
            )
        wait_port(int(self.doc["admin_listen"].rsplit(":", 1)[1]))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.doc['admin_listen']}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/readyz")
        return status, json.loads(body)

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        return [d for d in map(json.loads, filter(None, lines)) if d.get("event") == name]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def serve() -> Iterator[Callable[[Path], Serve]]:
    started: list[Serve] = []

    def start(config: Path) -> Serve:
        started.append(Serve(config))
        return started[-1]

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)


def _until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc))


def test_blocked_spool_at_start_is_unready_then_ready_by_itself(
    tmp_path: Path, serve: Callable[[Path], Serve]
) -> None:
    """The spool path taken by a file: serve runs, /readyz 503 with the spool's error.

    Once the file is removed /readyz turns 200 without a restart; SIGTERM still exits 0.
    """
    config = tmp_path / "tollhouse.yaml"
    _write(config, _doc(tmp_path))
    (tmp_path / "spool").write_text("in the way")
    s = serve(config)
    assert _until(lambda: s.readyz()[1].get("keys_loaded") is True)
    status, body = s.readyz()
    assert status == 503
    assert body["spool"]["writable"] is False
    assert "tollhouse_spool_writable 0.0" in s.get("/metrics")[1]
    (tmp_path / "spool").unlink()
    assert _until(lambda: s.readyz()[0] == 200)
    assert s.events("factlog.recovered")
    assert s.stop() == 0


def test_half_written_config_is_held_until_it_settles(
    tmp_path: Path, serve: Callable[[Path], Serve]
) -> None:
    """A file cut off before its customers is seen but not applied while it has not settled.

    (reload_settle_s is an hour here, so "not yet" is not a race; that a settled change is
    applied is shown with a hand-moved clock in test_config_reload.)
    """
    config = tmp_path / "tollhouse.yaml"
    doc = _doc(tmp_path, reload_settle_s=3600)
    _write(config, doc)
    s = serve(config)
    assert _until(lambda: s.readyz()[0] == 200)
    version = s.readyz()[1]["config_version"]
    text = config.read_text()
    config.write_text(text[: text.index("customers:")])  # still valid YAML, acme cut off
    assert _until(lambda: bool(s.events("config.change_seen")))
    assert s.readyz()[1]["config_version"] == version
    assert not s.events("config.reloaded")
    assert s.stop() == 0


def _store(tmp_path: Path) -> None:
    async def make() -> None:
        url = f"sqlite://{tmp_path}/store.db"
        await migrate(url)
        svc = StoreService(await open_store(url), clock=time.time)
        await svc.create_customer(actor="test", name="Beta", plan="pro", customer_id="beta")
        await svc.backend.close()

    asyncio.run(make())


def test_reload_refuses_a_renamed_plan_in_use_and_reports_store_changes(
    tmp_path: Path, serve: Callable[[Path], Serve]
) -> None:
    """Renaming pro while store customer beta is on it: refused with the plan's dotted path.

    Then a store setting changed: applied with the rest, but reported restart_needed (log line
    naming `store`, gauge 1), since the store is opened only at start.
    """
    _store(tmp_path)
    config = tmp_path / "tollhouse.yaml"
    doc = _doc(tmp_path, reload_settle_s=0.2, store={"url": "sqlite:///./store.db"})
    _write(config, doc)
    s = serve(config)
    assert _until(lambda: s.readyz()[0] == 200)
    renamed = yaml.safe_load(config.read_text())
    renamed["plans"]["gold"] = renamed["plans"].pop("pro")
    renamed["customers"]["acme"]["plan"] = "gold"
    _write(config, renamed)
    assert _until(lambda: bool(s.events("config.reload_rejected")))
    rejected = s.events("config.reload_rejected")[0]
    assert rejected["reason"] == "plan_in_use"
    assert rejected["problems"].startswith("plans.pro: removed by this reload")
    assert "(beta)" in rejected["problems"]
    doc["store"]["poll_interval_ms"] = 250
    doc["plans"]["team"] = {"features": ["search"]}
    _write(config, doc)
    assert _until(lambda: bool(s.events("config.restart_needed")))
    assert s.events("config.restart_needed")[0]["fields"] == "store"
    assert s.events("config.reloaded")
    assert 'tollhouse_config_restart_needed{field="store"} 1.0' in s.get("/metrics")[1]
    assert s.stop() == 0
