"""The shipped Envoy config: valid for the real Envoy binary, and fail-closed by construction."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollhouse.demo.stack import EnvoyPorts, find_binary, render_envoy_config, sidecar_config_path

pytestmark = pytest.mark.e2e  # runs the real Envoy binary on the shipped config

SIDECAR = sidecar_config_path()
HCM = "envoy.filters.network.http_connection_manager"


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    base_id = 20_000 + os.getpid() % 10_000 * 3 + len(path.name) % 3
    return subprocess.run(
        [
            str(find_binary("envoy")),
            "--mode",
            "validate",
            "-c",
            str(path),
            "--base-id",
            str(base_id),
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return dict(yaml.safe_load(SIDECAR.read_text()))


def _hcm(doc: dict[str, Any]) -> dict[str, Any]:
    filters = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    return dict(next(f for f in filters if f["name"] == HCM)["typed_config"])


def _http_filter(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(next(f for f in _hcm(doc)["http_filters"] if f["name"] == name)["typed_config"])


def _cluster(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(next(c for c in doc["static_resources"]["clusters"] if c["name"] == name))


def _endpoint_port(cluster: dict[str, Any]) -> int:
    ep = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    return int(ep["address"]["socket_address"]["port_value"])


def test_shipped_config_validates_with_real_envoy() -> None:
    """`envoy --mode validate` accepts envoy/sidecar.yaml as shipped."""
    result = _validate(SIDECAR)
    assert result.returncode == 0, result.stderr[-2000:]


def test_rendered_config_validates_and_uses_given_ports(tmp_path: Path) -> None:
    """The harness's port substitution yields a valid config pointing at the given ports."""
    ports = EnvoyPorts(listen=18080, admin=19901, tollhouse=19001, upstream=18000, usage=19003)
    out = tmp_path / "rendered.yaml"
    out.write_text(render_envoy_config(SIDECAR.read_text(), ports))
    result = _validate(out)
    assert result.returncode == 0, result.stderr[-2000:]
    rendered = yaml.safe_load(out.read_text())
    listener = rendered["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (listener["address"], listener["port_value"]) == ("127.0.0.1", 18080)
    assert rendered["admin"]["address"]["socket_address"]["port_value"] == 19901
    assert _endpoint_port(_cluster(rendered, "tollhouse")) == 19001
    assert _endpoint_port(_cluster(rendered, "app")) == 18000
    assert _endpoint_port(_cluster(rendered, "tollhouse_usage")) == 19003


def test_invalid_config_is_rejected_by_validate(tmp_path: Path) -> None:
    """The validation test can fail: a misspelt ext_authz field makes Envoy reject the file."""
    broken = SIDECAR.read_text().replace("failure_mode_allow: false", "failure_mode_alow: false")
    out = tmp_path / "broken.yaml"
    out.write_text(broken)
    assert _validate(out).returncode != 0


def test_ext_authz_fails_closed_with_503(doc: dict[str, Any]) -> None:
    """ext_authz denies when tollhouse is unreachable, and says 503 (not the default 403)."""
    authz = _http_filter(doc, "envoy.filters.http.ext_authz")
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert authz["transport_api_version"] == "V3"
    assert authz["include_peer_certificate"] is False
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "tollhouse"
    assert authz["grpc_service"]["timeout"] == "0.25s"


def test_ext_authz_sends_only_the_headers_tollhouse_needs(doc: dict[str, Any]) -> None:
    """allowed_headers is trimmed to credentials, request id and host."""
    authz = _http_filter(doc, "envoy.filters.http.ext_authz")
    allowed = {p["exact"] for p in authz["allowed_headers"]["patterns"]}
    assert allowed == {"authorization", "x-api-key", "x-request-id", "host"}


def test_ext_authz_runs_before_the_router(doc: dict[str, Any]) -> None:
    """The filter order puts ext_authz first and the router last."""
    names = [f["name"] for f in _hcm(doc)["http_filters"]]
    assert names == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]


def test_paths_are_normalised_before_the_check(doc: dict[str, Any]) -> None:
    """normalize_path, merge_slashes and escaped-slash handling are on; request ids are Envoy's."""
    hcm = _hcm(doc)
    assert hcm["normalize_path"] is True
    assert hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_REDIRECT"
    assert hcm["generate_request_id"] is True
    assert hcm["preserve_external_request_id"] is False


def test_tollhouse_cluster_speaks_http2(doc: dict[str, Any]) -> None:
    """The tollhouse cluster speaks HTTP/2 (gRPC needs it)."""
    opts = _cluster(doc, "tollhouse")["typed_extension_protocol_options"]
    http = opts["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http["explicit_http_config"]


def test_access_log_streams_to_tollhouse(doc: dict[str, Any]) -> None:
    """The gRPC access logger goes to the tollhouse cluster, flushes fast, logs x-usage-tokens."""
    (log,) = _hcm(doc)["access_log"]
    assert log["name"] == "envoy.access_loggers.http_grpc"
    cfg = log["typed_config"]
    common = cfg["common_config"]
    assert common["grpc_service"]["envoy_grpc"]["cluster_name"] == "tollhouse"
    assert common["transport_api_version"] == "V3"
    assert common["log_name"]
    assert common["buffer_flush_interval"] == "0.1s"
    assert int(common["buffer_size_bytes"]) > 0
    assert cfg["additional_response_headers_to_log"] == ["x-usage-tokens"]


def test_usage_route_goes_to_tollhouse_usage_through_ext_authz(doc: dict[str, Any]) -> None:
    """/v1/usage routes to tollhouse_usage (9003); every route shares the ext_authz chain."""
    routes = _hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"] == {"path_separated_prefix": "/v1/usage"}
    assert routes[0]["route"]["cluster"] == "tollhouse_usage"
    assert routes[-1]["route"]["cluster"] == "app"
    assert all("typed_per_filter_config" not in r for r in routes)
    assert _endpoint_port(_cluster(doc, "tollhouse_usage")) == 9003


def test_admin_is_loopback_only(doc: dict[str, Any]) -> None:
    """The Envoy admin interface listens on 127.0.0.1:9901."""
    sock = doc["admin"]["address"]["socket_address"]
    assert (sock["address"], sock["port_value"]) == ("127.0.0.1", 9901)
