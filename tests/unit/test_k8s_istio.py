"""k8s/overlays/istio: Istio resources are well-formed and point at tollhouse consistently.

kubernetes-validate knows no Istio CRDs, so each Istio kind is checked against a small JSON
Schema of its own below, written from istio/api (the fields used here, additionalProperties
false so a misspelt field fails). The EnvoyFilter's patch is checked by real Envoy.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tests.k8s_render import Doc, container, find, pod_spec, render
from tests.support.envoy import envoy_validate

pytestmark = pytest.mark.deploy  # the k8s manifests, the Dockerfile or the packaging

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "k8s" / "overlays" / "istio"


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required or [],
        "additionalProperties": False,
    }


_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_LABELS = _obj({"matchLabels": {"type": "object", "additionalProperties": _STR}}, ["matchLabels"])
_META = {"type": "object", "required": ["name", "namespace"]}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}


def _kind(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": _META, "spec": spec},
        ["apiVersion", "kind", "metadata", "spec"],
    )


SCHEMAS = {
    "ServiceEntry": _kind(
        "networking.istio.io/v1",
        "ServiceEntry",
        _obj(
            {
                "hosts": _STRS,
                "exportTo": _STRS,
                "location": {"enum": ["MESH_INTERNAL", "MESH_EXTERNAL"]},
                "resolution": {"enum": ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]},
                "endpoints": {"type": "array", "items": _obj({"address": _STR}, ["address"])},
                "ports": {
                    "type": "array",
                    "items": _obj(
                        {
                            "name": _STR,
                            "number": _PORT,
                            "protocol": {"enum": ["GRPC", "HTTP2", "HTTP", "TCP"]},
                        },
                        ["name", "number", "protocol"],
                    ),
                },
            },
            ["hosts", "ports", "resolution"],
        ),
    ),
    "AuthorizationPolicy": _kind(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        _obj(
            {
                "selector": _LABELS,
                "action": {"const": "CUSTOM"},
                "provider": _obj({"name": _STR}, ["name"]),
                "rules": {
                    "type": "array",
                    "minItems": 1,
                    "items": _obj(
                        {
                            "to": {
                                "type": "array",
                                "items": _obj(
                                    {"operation": _obj({"ports": _STRS, "paths": _STRS})}
                                ),
                            }
                        }
                    ),
                },
            },
            ["selector", "action", "provider", "rules"],
        ),
    ),
    "Telemetry": _kind(
        "telemetry.istio.io/v1",
        "Telemetry",
        _obj(
            {
                "selector": _LABELS,
                "accessLogging": {
                    "type": "array",
                    "items": _obj(
                        {
                            "providers": {"type": "array", "items": _obj({"name": _STR}, ["name"])},
                            "match": _obj(
                                {"mode": {"enum": ["CLIENT_AND_SERVER", "CLIENT", "SERVER"]}}
                            ),
                            "disabled": {"type": "boolean"},
                        },
                        ["providers"],
                    ),
                },
            },
            ["selector", "accessLogging"],
        ),
    ),
    "EnvoyFilter": _kind(
        "networking.istio.io/v1alpha3",
        "EnvoyFilter",
        _obj(
            {
                "workloadSelector": _obj({"labels": {"type": "object"}}, ["labels"]),
                "configPatches": {
                    "type": "array",
                    "minItems": 1,
                    "items": _obj(
                        {
                            "applyTo": {
                                "enum": ["HTTP_FILTER", "NETWORK_FILTER", "LISTENER", "CLUSTER"]
                            },
                            "match": _obj(
                                {
                                    "context": {
                                        "enum": [
                                            "SIDECAR_INBOUND",
                                            "SIDECAR_OUTBOUND",
                                            "GATEWAY",
                                            "ANY",
                                        ]
                                    },
                                    "listener": {"type": "object"},
                                }
                            ),
                            "patch": _obj(
                                {
                                    "operation": {
                                        "enum": [
                                            "MERGE",
                                            "ADD",
                                            "REMOVE",
                                            "INSERT_BEFORE",
                                            "INSERT_AFTER",
                                            "INSERT_FIRST",
                                            "REPLACE",
                                        ]
                                    },
                                    "value": {"type": "object"},
                                },
                                ["operation"],
                            ),
                        },
                        ["applyTo", "match", "patch"],
                    ),
                },
            },
            ["workloadSelector", "configPatches"],
        ),
    ),
}

# istio.mesh.v1alpha1.MeshConfig.ExtensionProvider, the two provider types used here.
MESH_SCHEMA = _obj(
    {
        "meshConfig": _obj(
            {
                "pathNormalization": _obj(
                    {
                        "normalization": {
                            "enum": [
                                "DEFAULT",
                                "NONE",
                                "BASE",
                                "MERGE_SLASHES",
                                "DECODE_AND_MERGE_SLASHES",
                            ]
                        }
                    }
                ),
                "extensionProviders": {
                    "type": "array",
                    "items": {
                        "oneOf": [
                            _obj(
                                {
                                    "name": _STR,
                                    "envoyExtAuthzGrpc": _obj(
                                        {
                                            "service": _STR,
                                            "port": _PORT,
                                            "timeout": {
                                                "type": "string",
                                                "pattern": r"^\d+(\.\d+)?s$",
                                            },
                                            "failOpen": {"type": "boolean"},
                                            "statusOnError": {
                                                "type": "string",
                                                "pattern": r"^[1-5]\d\d$",
                                            },
                                            "includeRequestBodyInCheck": {"type": "object"},
                                        },
                                        ["service", "port"],
                                    ),
                                },
                                ["name", "envoyExtAuthzGrpc"],
                            ),
                            _obj(
                                {
                                    "name": _STR,
                                    "envoyHttpAls": _obj(
                                        {
                                            "service": _STR,
                                            "port": _PORT,
                                            "logName": _STR,
                                            "filterStateObjectsToLog": _STRS,
                                            "additionalRequestHeadersToLog": _STRS,
                                            "additionalResponseHeadersToLog": _STRS,
                                            "additionalResponseTrailersToLog": _STRS,
                                        },
                                        ["service", "port"],
                                    ),
                                },
                                ["name", "envoyHttpAls"],
                            ),
                        ]
                    },
                },
            },
            ["extensionProviders"],
        )
    },
    ["meshConfig"],
)


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return render(ISTIO)


@pytest.fixture(scope="module")
def mesh() -> dict[str, Any]:
    loaded = yaml.safe_load((ISTIO / "mesh-config.yaml").read_text(encoding="utf-8"))
    jsonschema.validate(loaded, MESH_SCHEMA)
    return {p["name"]: p for p in loaded["meshConfig"]["extensionProviders"]}


@pytest.mark.parametrize("kind", list(SCHEMAS))
def test_istio_resources_match_their_schema(docs: list[Doc], kind: str) -> None:
    """Each Istio object in the build validates against its schema (no unknown fields)."""
    jsonschema.validate(find(docs, kind), SCHEMAS[kind])


def test_istio_schema_rejects_a_misspelt_field(docs: list[Doc]) -> None:
    """The schemas have teeth: a typo in the AuthorizationPolicy fails."""
    bad = copy.deepcopy(find(docs, "AuthorizationPolicy"))
    bad["spec"]["provder"] = bad["spec"].pop("provider")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMAS["AuthorizationPolicy"])


def test_mesh_providers_fail_closed_with_503(mesh: dict[str, Any]) -> None:
    """envoyExtAuthzGrpc: failOpen false, statusOnError 503, 250 ms; ALS carries x-usage-tokens."""
    authz = mesh["tollhouse-ext-authz"]["envoyExtAuthzGrpc"]
    assert authz["failOpen"] is False
    assert authz["statusOnError"] == "503"
    assert authz["timeout"] == "0.25s"
    als = mesh["tollhouse-als"]["envoyHttpAls"]
    assert als["additionalResponseHeadersToLog"] == ["x-usage-tokens"]
    assert als["logName"] == "tollhouse"


def test_providers_point_at_the_tollhouse_container(docs: list[Doc], mesh: dict[str, Any]) -> None:
    """Both providers name the ServiceEntry host and port, which is 127.0.0.1:<listen port>."""
    se = find(docs, "ServiceEntry")["spec"]
    cfg = yaml.safe_load(find(docs, "ConfigMap", "tollhouse-config")["data"]["config.yaml"])
    port = int(cfg["listen"].rsplit(":", 1)[1])
    assert se["endpoints"] == [{"address": "127.0.0.1"}]
    assert se["ports"] == [{"name": "grpc", "number": port, "protocol": "GRPC"}]
    for name, kind in (
        ("tollhouse-ext-authz", "envoyExtAuthzGrpc"),
        ("tollhouse-als", "envoyHttpAls"),
    ):
        provider = mesh[name][kind]
        assert provider["service"] in se["hosts"]
        assert provider["port"] == port


def test_policy_and_telemetry_use_the_mesh_providers(docs: list[Doc], mesh: dict[str, Any]) -> None:
    """CUSTOM policy -> the ext_authz provider on the API port; SERVER-side ALS -> tollhouse."""
    dep = find(docs, "Deployment", "demo-api")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    policy = find(docs, "AuthorizationPolicy")["spec"]
    assert "envoyExtAuthzGrpc" in mesh[policy["provider"]["name"]]
    assert policy["selector"]["matchLabels"].items() <= labels.items()
    api_port = container(dep, "api")["ports"][0]["containerPort"]
    assert policy["rules"] == [{"to": [{"operation": {"ports": [str(api_port)]}}]}]
    tel = find(docs, "Telemetry")["spec"]
    assert tel["selector"]["matchLabels"].items() <= labels.items()
    [logging] = tel["accessLogging"]
    assert [p["name"] for p in logging["providers"]] == ["tollhouse-als"]
    assert "envoyHttpAls" in mesh["tollhouse-als"]
    assert logging["match"]["mode"] == "SERVER"


def test_istio_pod_has_no_envoy_of_its_own(docs: list[Doc]) -> None:
    """istio-proxy replaces our Envoy: container, volume and ConfigMap gone; API on the pod IP."""
    dep = find(docs, "Deployment", "demo-api")
    spec = pod_spec(dep)
    assert sorted(c["name"] for c in spec["containers"]) == ["api", "tollhouse"]
    assert "envoy-config" not in [v["name"] for v in spec["volumes"]]
    assert not [d for d in docs if d["metadata"]["name"].startswith("envoy-config")]
    assert dep["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
    assert "-listen=:5678" in container(dep, "api")["args"]


def test_tollhouse_outlives_the_proxy_drain(docs: list[Doc]) -> None:
    """Tollhouse's preStop outlasts istio-proxy's drain; the grace period covers both."""
    dep = find(docs, "Deployment", "demo-api")
    proxy = yaml.safe_load(
        dep["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
    )
    match = re.fullmatch(r"(\d+)s", proxy["terminationDrainDuration"])
    assert match is not None
    drain = int(match.group(1))
    cmd = container(dep, "tollhouse")["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep"
    assert int(cmd[1]) > drain
    cfg = yaml.safe_load(find(docs, "ConfigMap", "tollhouse-config")["data"]["config.yaml"])
    assert pod_spec(dep)["terminationGracePeriodSeconds"] >= int(cmd[1]) + cfg["shutdown_grace_s"]


def test_envoyfilter_patch_is_valid_envoy_config(
    docs: list[Doc], mesh: dict[str, Any], tmp_path: Path
) -> None:
    """Istio's ext_authz (from the mesh provider) merged with the EnvoyFilter passes real Envoy."""
    ef = find(docs, "EnvoyFilter")["spec"]
    [patch] = ef["configPatches"]
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == (
        "envoy.filters.http.ext_authz"
    )
    assert patch["patch"]["operation"] == "MERGE"
    value = patch["patch"]["value"]["typed_config"]
    provider = mesh["tollhouse-ext-authz"]["envoyExtAuthzGrpc"]
    # What Istio generates for the CUSTOM provider, then the MERGE of the patch on top.
    merged = {
        "@type": value["@type"],
        "transport_api_version": "V3",
        "grpc_service": {
            "envoy_grpc": {"cluster_name": "tollhouse"},
            "timeout": provider["timeout"],
        },
        "failure_mode_allow": provider["failOpen"],
        "status_on_error": {"code": int(provider["statusOnError"])},
        **{k: v for k, v in value.items() if k != "@type"},
    }
    base = yaml.safe_load((ROOT / "k8s" / "base" / "envoy.yaml").read_text(encoding="utf-8"))
    api = next(li for li in base["static_resources"]["listeners"] if li["name"] == "api")
    filters = api["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    authz = next(f for f in filters if f["name"] == "envoy.filters.http.ext_authz")
    assert authz["typed_config"]["allowed_headers"] == value["allowed_headers"]
    authz["typed_config"] = merged
    result = envoy_validate(base, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout


def test_namespace_is_injected_and_stays_restricted(docs: list[Doc]) -> None:
    """The Istio build labels the namespace for injection and keeps Pod Security restricted."""
    labels = find(docs, "Namespace")["metadata"]["labels"]
    assert labels["istio-injection"] == "enabled"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
