"""The Envoy and tollhouse configs in k8s/ ConfigMaps: real Envoy and tollhouse accept them."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_render import Doc, container, find, render
from tests.support.envoy import envoy_validate
from tollhouse.config import load_config, parse_config

pytestmark = pytest.mark.deploy  # the k8s manifests, the Dockerfile or the packaging

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
ENVOY = Path(sys.executable).parent / "envoy"
TOLLHOUSE = Path(sys.executable).parent / "tollhouse"
BUILDS = {
    "base": K8S / "base",
    "distributed": K8S / "overlays" / "distributed",
    "istio": K8S / "overlays" / "istio",
    "istio-http": K8S / "overlays" / "istio-http",
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: render(path) for name, path in BUILDS.items()}


def _envoy_text(docs: list[Doc]) -> str:
    text = find(docs, "ConfigMap", "envoy-config")["data"]["envoy.yaml"]
    assert isinstance(text, str)
    return text


def _http_filters(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    api = next(li for li in cfg["static_resources"]["listeners"] if li["name"] == "api")
    hcm = api["filter_chains"][0]["filters"][0]["typed_config"]
    return {"hcm": hcm, **{f["name"]: f["typed_config"] for f in hcm["http_filters"]}}


def test_base_envoy_config_validates_with_real_envoy(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """The Envoy ConfigMap (the same text as k8s/base/envoy.yaml) passes envoy --mode validate."""
    text = _envoy_text(rendered["base"])
    assert text == (K8S / "base" / "envoy.yaml").read_text(encoding="utf-8")
    assert _envoy_text(rendered["distributed"]) == text
    result = envoy_validate(text, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "OK" in result.stdout


def test_envoy_validation_catches_a_broken_config(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """The check has teeth: an ext_authz with an invalid status_on_error is refused."""
    cfg = yaml.safe_load(_envoy_text(rendered["base"]))
    _http_filters(cfg)["envoy.filters.http.ext_authz"]["status_on_error"] = {"code": 7}
    result = envoy_validate(cfg, tmp_path)
    assert result.returncode != 0


def test_envoy_config_has_the_required_ext_authz_and_log_settings(
    rendered: dict[str, list[Doc]],
) -> None:
    """Fail closed with 503, 250 ms, four headers, no body; normalised paths; ALS to tollhouse."""
    cfg = yaml.safe_load(_envoy_text(rendered["base"]))
    f = _http_filters(cfg)
    authz = f["envoy.filters.http.ext_authz"]
    assert authz["grpc_service"] == {
        "envoy_grpc": {"cluster_name": "tollhouse"},
        "timeout": "0.25s",
    }
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": 503}
    assert authz["transport_api_version"] == "V3"
    assert "with_request_body" not in authz
    assert [p["exact"] for p in authz["allowed_headers"]["patterns"]] == [
        "authorization",
        "x-api-key",
        "x-request-id",
        "host",
    ]
    hcm = f["hcm"]
    assert hcm["normalize_path"] is True
    assert hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_REDIRECT"
    assert list(f)[1:] == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
    log = hcm["access_log"][0]
    assert log["name"] == "envoy.access_loggers.http_grpc"
    common = log["typed_config"]["common_config"]
    assert common["grpc_service"]["envoy_grpc"]["cluster_name"] == "tollhouse"
    assert common["transport_api_version"] == "V3"
    assert log["typed_config"]["additional_response_headers_to_log"] == ["x-usage-tokens"]


def test_envoy_talks_to_tollhouse_on_localhost_over_http2(rendered: dict[str, list[Doc]]) -> None:
    """The tollhouse cluster is 127.0.0.1:<listen port> with HTTP/2; the app is on loopback."""
    docs = rendered["base"]
    cfg = yaml.safe_load(_envoy_text(docs))
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    th = clusters["tollhouse"]
    opts = th["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in opts["explicit_http_config"]
    addr = th["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    tcfg = yaml.safe_load(find(docs, "ConfigMap", "tollhouse-config")["data"]["config.yaml"])
    assert addr["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": int(tcfg["listen"].rsplit(":", 1)[1]),
    }
    app = clusters["app"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    api_args = container(find(docs, "Deployment", "demo-api"), "api")["args"]
    port = app["endpoint"]["address"]["socket_address"]["port_value"]
    assert f"-listen=127.0.0.1:{port}" in api_args


def _materialise(docs: list[Doc], root: Path) -> Path:
    """Write the mounted /etc/tollhouse as the pod sees it: config, keys/jwks.json, admin/token.

    The admin token Secret is made at install time (never committed), so a fresh one stands in.
    """
    cfg = find(docs, "ConfigMap", "tollhouse-config")["data"]["config.yaml"]
    jwks = base64.b64decode(find(docs, "Secret", "tollhouse-keys")["data"]["jwks.json"])
    (root / "keys").mkdir(parents=True)
    (root / "keys" / "jwks.json").write_bytes(jwks)
    (root / "admin").mkdir()
    (root / "admin" / "token").write_text(secrets.token_urlsafe(32) + "\n")
    path = root / "config.yaml"
    path.write_text(cfg, encoding="utf-8")
    return path


@pytest.mark.parametrize("build", list(BUILDS))
def test_tollhouse_configmaps_load(
    rendered: dict[str, list[Doc]], build: str, tmp_path: Path
) -> None:
    """Each build's tollhouse config loads with tollhouse.config.load_config, keys present."""
    cfg = load_config(_materialise(rendered[build], tmp_path))
    assert cfg.listen == "0.0.0.0:9001"
    assert cfg.admin_listen == "0.0.0.0:9002"
    assert cfg.metrics_listen == "0.0.0.0:9005"
    assert cfg.store is not None
    assert cfg.admin.token_file == tmp_path / "admin" / "token"
    assert cfg.auth.jwt[0].jwks_file == tmp_path / "keys" / "jwks.json"
    assert cfg.auth.jwt[0].jwks_file.is_file()
    assert set(cfg.plans) == {"free", "pro", "enterprise"}
    if build == "distributed":
        assert cfg.counters.startswith("redis://")
        assert cfg.metering.meter.kind == "redis"
    else:
        assert cfg.counters == "memory"
        assert cfg.metering.meter.kind == "sqlite"


def test_config_paths_match_the_pod_mounts(rendered: dict[str, list[Doc]]) -> None:
    """Loaded from /etc/tollhouse, jwks_file is the projected Secret item; data dirs are mounted."""
    docs = rendered["base"]
    text = find(docs, "ConfigMap", "tollhouse-config")["data"]["config.yaml"]
    cfg = parse_config(yaml.safe_load(text), base_dir=Path("/etc/tollhouse"))
    dep = find(docs, "Deployment", "demo-api")
    th = container(dep, "tollhouse")
    assert th["args"] == ["serve", "--config", "/etc/tollhouse/config.yaml"]
    mounts = {m["name"]: m["mountPath"] for m in th["volumeMounts"]}
    assert mounts["config"] == "/etc/tollhouse"
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    sources = [next(iter(s.values())) for s in vol["projected"]["sources"]]
    items = [i["path"] for s in sources for i in s["items"]]
    assert sorted(items) == ["admin/token", "config.yaml", "keys/jwks.json"]
    assert cfg.admin.token_file == Path("/etc/tollhouse/admin/token")
    assert cfg.auth.jwt[0].jwks_file == Path("/etc/tollhouse/keys/jwks.json")
    assert cfg.metering.spool is not None
    assert str(cfg.metering.spool).startswith(mounts["data"])


def test_shipped_secrets_hold_no_key_material(rendered: dict[str, list[Doc]]) -> None:
    """Placeholders only: an empty JWKS, an empty password, no PEM anywhere under k8s/."""
    for docs in rendered.values():
        secret = find(docs, "Secret", "tollhouse-keys")
        jwks = json.loads(base64.b64decode(secret["data"]["jwks.json"]))
        assert jwks == {"keys": []}
    pg = find(rendered["distributed"], "Secret", "tollhouse-postgres")["data"]
    assert base64.b64decode(pg["password"]) == b""
    for f in K8S.rglob("*"):
        if f.is_file():
            assert "PRIVATE KEY" not in f.read_text(encoding="utf-8"), f


@pytest.mark.parametrize("build", list(BUILDS))
def test_tollhouse_configmaps_pass_check_config(
    rendered: dict[str, list[Doc]], build: str, tmp_path: Path
) -> None:
    """`tollhouse check-config FILE` accepts each build's config (once the command exists)."""
    if shutil.which(str(TOLLHOUSE)) is None:
        pytest.skip("the tollhouse console script is not installed")
    probe = subprocess.run(
        [str(TOLLHOUSE), "check-config", "--help"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(f"tollhouse check-config is not available yet: {probe.stderr[-200:]}")
    path = _materialise(rendered[build], tmp_path)
    result = subprocess.run(
        [str(TOLLHOUSE), "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("serve", ["--config"]),
        ("bill", ["--config", "--period"]),
    ],
)
def test_manifest_commands_exist_in_the_cli(command: str, flags: list[str]) -> None:
    """The subcommands and flags the manifests run are the CLI's (bill: once it exists)."""
    result = subprocess.run(
        [str(TOLLHOUSE), command, "--help"], capture_output=True, text=True, timeout=60
    )
    if command == "bill" and "invalid choice" in result.stderr:
        pytest.skip("tollhouse bill is not in the CLI yet")
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert flag in result.stdout
