"""k8s/: what a first deploy needs: the store migrated before serve, an admin token, /metrics apart.

The pod's own sequence is replayed with the real CLI on each build's rendered config: `serve` on
an unmigrated store exits 2 (a crash loop in a pod), the initContainer's exact command migrates
it, then `serve` becomes ready with the admin API on its port and /metrics on the metrics port.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_render import Doc, container, find, pod_spec, render
from tests.servers import free_port
from tollhouse.demo.httpd import http_request
from tollhouse.demo.stack import http_status
from tollhouse.devkeys import generate_rsa, jwks

pytestmark = pytest.mark.deploy  # the k8s manifests, the Dockerfile or the packaging

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
TOLLHOUSE = Path(sys.executable).parent / "tollhouse"
BUILDS = {
    "base": K8S / "base",
    "distributed": K8S / "overlays" / "distributed",
    "istio": K8S / "overlays" / "istio",
    "istio-http": K8S / "overlays" / "istio-http",
}
CONFIG = "/etc/tollhouse/config.yaml"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: render(path) for name, path in BUILDS.items()}


def _config(docs: list[Doc]) -> dict[str, Any]:
    loaded = yaml.safe_load(find(docs, "ConfigMap", "tollhouse-config")["data"]["config.yaml"])
    assert isinstance(loaded, dict)
    return loaded


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize("build", list(BUILDS))
def test_the_store_is_migrated_by_an_init_container_before_serve(
    rendered: dict[str, list[Doc]], build: str
) -> None:
    """`migrate` runs `tollhouse store migrate` with serve's image, config and data mounts.

    Where the store is PostgreSQL it gets the same PGPASSWORD as serve.
    """
    dep = find(rendered[build], "Deployment", "demo-api")
    spec = pod_spec(dep)
    [migrate] = spec["initContainers"]
    serve = container(dep, "tollhouse")
    assert migrate["name"] == "migrate"
    assert migrate["image"] == serve["image"]
    assert migrate["args"] == ["store", "migrate", "--config", CONFIG]
    assert serve["args"] == ["serve", "--config", CONFIG]
    mounts = {m["name"]: m["mountPath"] for m in migrate["volumeMounts"]}
    serve_mounts = {m["name"]: m["mountPath"] for m in serve["volumeMounts"]}
    assert mounts["config"] == serve_mounts["config"] == "/etc/tollhouse"
    url = _config(rendered[build])["store"]["url"]
    if url.startswith("sqlite:///"):
        assert url.removeprefix("sqlite://").startswith(serve_mounts["data"] + "/")
        assert mounts["data"] == serve_mounts["data"]
    else:
        assert url.startswith("postgresql://")
        assert migrate["env"] == [e for e in serve["env"] if e["name"] == "PGPASSWORD"]


@pytest.mark.parametrize("build", list(BUILDS))
def test_the_admin_api_reads_its_token_from_the_admin_secret(
    rendered: dict[str, list[Doc]], build: str
) -> None:
    """`admin.token_file` is the projected item of Secret tollhouse-admin; nothing ships a token."""
    docs = rendered[build]
    token_file = _config(docs)["admin"]["token_file"]
    volume = next(
        v
        for v in pod_spec(find(docs, "Deployment", "demo-api"))["volumes"]
        if v["name"] == "config"
    )
    items = {
        i["path"]: s["secret"]["name"]
        for s in volume["projected"]["sources"]
        if "secret" in s
        for i in s["secret"]["items"]
    }
    assert items[token_file] == "tollhouse-admin"
    assert not [d for d in docs if d["metadata"]["name"].startswith("tollhouse-admin")]


def test_the_walkthrough_creates_the_admin_secret_and_names_the_istio_version() -> None:
    """k8s/README.md's first deploy creates tollhouse-admin, migrates, port-forwards, verifies."""
    text = (K8S / "README.md").read_text(encoding="utf-8")
    walk = text[text.index("## First deploy with Istio") :]
    walk = walk[: walk.index("\n## ", 4)]
    assert "kubectl -n tollhouse-demo create secret generic tollhouse-admin" in walk
    assert "kubectl -n tollhouse-demo port-forward" in walk
    assert "/admin/customers" in walk
    assert "tollhouse dev token" in walk or "tollhouse dev jwks" in walk
    assert "Istio **1.22 or newer**" in walk
    assert "pathNormalization" in walk
    assert "whole mesh" in walk


@pytest.mark.parametrize("build", list(BUILDS))
def test_metrics_have_their_own_port_everywhere(rendered: dict[str, list[Doc]], build: str) -> None:
    """Config metrics_listen, the container port, the Service and the scrape annotation agree."""
    docs = rendered[build]
    cfg = _config(docs)
    port = _port(cfg["metrics_listen"])
    assert port != _port(cfg["admin_listen"])
    dep = find(docs, "Deployment", "demo-api")
    ports = {p["name"]: p["containerPort"] for p in container(dep, "tollhouse")["ports"]}
    assert ports["metrics"] == port
    svc = next(
        p for p in find(docs, "Service", "demo-api")["spec"]["ports"] if p["name"] == "metrics"
    )
    assert svc["targetPort"] == "metrics"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)


def _local_copy(docs: list[Doc], root: Path) -> tuple[Path, dict[str, int]]:
    """The pod's /etc/tollhouse in ``root``, its data under ``root``, loopback free ports."""
    cfg = _config(docs)
    ports = {name: free_port() for name in ("listen", "admin_listen", "metrics_listen")}
    cfg.update({name: f"127.0.0.1:{port}" for name, port in ports.items()})
    data = root / "data"
    cfg["store"]["url"] = f"sqlite://{data}/store.db"
    cfg["metering"].update(spool=str(data / "spool"), meter=f"sqlite://{data}/meter.db")
    cfg["billing"].update(ledger=f"sqlite://{data}/ledger.db", invoices_dir=str(data / "inv"))
    cfg["shutdown_grace_s"] = 1
    # The shipped placeholder holds no key (never ready): the walkthrough's `dev jwks` key.
    shipped = base64.b64decode(find(docs, "Secret", "tollhouse-keys")["data"]["jwks.json"])
    assert json.loads(shipped) == {"keys": []}
    (root / "keys").mkdir(parents=True)
    (root / "keys" / "jwks.json").write_text(json.dumps(jwks(generate_rsa())), encoding="utf-8")
    (root / "admin").mkdir()
    (root / "admin" / "token").write_text("s3cret-admin-token\n", encoding="utf-8")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path, ports


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOLLHOUSE), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _wait_ready(port: int, proc: subprocess.Popen[str]) -> None:
    for _ in range(400):  # bounded: a poll, not a timed assertion
        if proc.poll() is not None:
            pytest.fail(f"serve exited {proc.returncode}: {proc.communicate()[1][-2000:]}")
        if http_status(f"http://127.0.0.1:{port}/readyz") == 200:
            return
        time.sleep(0.05)
    pytest.fail("serve never became ready")


def test_the_pod_sequence_unmigrated_fails_then_migrate_then_serve(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """Base config: serve exits 2 before `migrate`; after it, /readyz, /admin and /metrics work."""
    config, ports = _local_copy(rendered["base"], tmp_path)
    (tmp_path / "data").mkdir()
    unmigrated = _run("serve", "--config", str(config))
    assert unmigrated.returncode == 2
    assert "tollhouse store migrate" in unmigrated.stderr
    [init] = pod_spec(find(rendered["base"], "Deployment", "demo-api"))["initContainers"]
    migrated = _run(*[str(config) if a == CONFIG else a for a in init["args"]])
    assert migrated.returncode == 0, migrated.stderr
    proc = subprocess.Popen(
        [str(TOLLHOUSE), "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(ports["admin_listen"], proc)
        admin = {"authorization": "Bearer s3cret-admin-token"}
        assert http_request(ports["admin_listen"], "/admin/customers", headers=admin).status == 200
        assert http_request(ports["admin_listen"], "/admin/customers").status == 401
        assert http_request(ports["admin_listen"], "/metrics").status == 404
        metrics = http_request(ports["metrics_listen"], "/metrics")
        assert metrics.status == 200
        assert b"tollhouse_checks_total" in metrics.body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
