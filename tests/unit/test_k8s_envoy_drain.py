"""The Envoy container's preStop hook, run as written in the manifest against a real Envoy."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.k8s_render import container, find, render
from tests.servers import free_port, port_is_free, wait_port

pytestmark = pytest.mark.deploy  # the k8s manifests, the Dockerfile or the packaging

ROOT = Path(__file__).resolve().parents[2]
ENVOY = Path(sys.executable).parent / "envoy"


def _status(port: int, path: str) -> int | None:
    """HTTP status of GET 127.0.0.1:port/path, or None when the connection is refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (ConnectionError, OSError):
        return None
    finally:
        conn.close()


@pytest.fixture
def envoy(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Envoy on the base ConfigMap's config, with free loopback ports and a 1 s drain time."""
    docs = render(ROOT / "k8s" / "base")
    cfg = yaml.safe_load(find(docs, "ConfigMap", "envoy-config")["data"]["envoy.yaml"])
    ports = {"admin": free_port(), "api": free_port(), "health": free_port()}
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    for listener in cfg["static_resources"]["listeners"]:
        listener["address"]["socket_address"] = {
            "address": "127.0.0.1",
            "port_value": ports[listener["name"]],
        }
    assert all(port_is_free(p) for p in ports.values())
    (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    proc = subprocess.Popen(
        [
            str(ENVOY),
            "-c",
            "envoy.yaml",
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "--drain-time-s",
            "1",
            "--drain-strategy",
            "immediate",
            "--log-level",
            "error",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(ports["health"], timeout_s=20)
        yield ports
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_prestop_turns_readiness_red_then_closes_listeners(envoy: dict[str, int]) -> None:
    """The manifest's preStop: /ready goes 503 at once, then the drained listeners close."""
    dep = find(render(ROOT / "k8s" / "base"), "Deployment", "demo-api")
    command = container(dep, "envoy")["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/bash", "-c"]
    script = command[2]
    assert "127.0.0.1/9901" in script
    assert script.endswith("sleep 15")
    script = script.replace("127.0.0.1/9901", f"127.0.0.1/{envoy['admin']}")
    script = script.removesuffix("sleep 15") + "sleep 0"

    assert _status(envoy["health"], "/ready") == 200
    subprocess.run(["/bin/bash", "-c", script], check=True, timeout=30)
    assert _status(envoy["health"], "/ready") == 503
    deadline = time.monotonic() + 20
    while _status(envoy["api"], "/") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _status(envoy["api"], "/") is None
    assert _status(envoy["admin"], "/ready") is not None  # Envoy itself is still up
