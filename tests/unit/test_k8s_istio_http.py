"""k8s/overlays/istio-http: Istio's envoyExtAuthzHttp provider pointed at tollhouse's HTTP Check.

The mesh provider is checked against a JSON Schema written from istio/api (the fields used,
additionalProperties false), and against the tollhouse config and ServiceEntry it must agree with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tests.k8s_render import Doc, find, render

pytestmark = pytest.mark.deploy  # the k8s manifests, the Dockerfile or the packaging

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "k8s" / "overlays" / "istio-http"
IDENTITY = [
    "x-tollhouse-customer",
    "x-tollhouse-plan",
    "x-tollhouse-feature",
    "x-tollhouse-usage-id",
]

_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}


def _obj(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


HTTP_PROVIDER = _obj(
    {
        "service": _STR,
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "timeout": {"type": "string", "pattern": r"^\d+(\.\d+)?s$"},
        "pathPrefix": _STR,
        "failOpen": {"type": "boolean"},
        "statusOnError": {"type": "string", "pattern": r"^[1-5]\d\d$"},
        "includeRequestHeadersInCheck": _STRS,
        "includeAdditionalHeadersInCheck": {"type": "object"},
        "includeRequestBodyInCheck": {"type": "object"},
        "headersToUpstreamOnAllow": _STRS,
        "headersToDownstreamOnDeny": _STRS,
        "headersToDownstreamOnAllow": _STRS,
    },
    ["service", "port"],
)


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return render(OVERLAY)


@pytest.fixture(scope="module")
def providers() -> dict[str, Any]:
    mesh = yaml.safe_load((OVERLAY / "mesh-config.yaml").read_text(encoding="utf-8"))
    return {p["name"]: p for p in mesh["meshConfig"]["extensionProviders"]}


def _config(docs: list[Doc]) -> dict[str, Any]:
    loaded = yaml.safe_load(find(docs, "ConfigMap", "tollhouse-config")["data"]["config.yaml"])
    assert isinstance(loaded, dict)
    return loaded


def test_http_provider_matches_the_istio_schema(providers: dict[str, Any]) -> None:
    """The HTTP provider uses only fields Istio defines, and a misspelt one would fail."""
    jsonschema.validate(providers["tollhouse-ext-authz"]["envoyExtAuthzHttp"], HTTP_PROVIDER)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"service": "s", "port": 1, "headersToUpstream": []}, HTTP_PROVIDER)


def test_provider_fails_closed_and_passes_the_answer_headers(providers: dict[str, Any]) -> None:
    """503 on error, never open; identity upstream; problem type, challenge, limits to clients."""
    p = providers["tollhouse-ext-authz"]["envoyExtAuthzHttp"]
    assert p["failOpen"] is False
    assert p["statusOnError"] == "503"
    assert p["headersToUpstreamOnAllow"] == IDENTITY
    assert {"content-type", "www-authenticate", "retry-after"} <= set(
        p["headersToDownstreamOnDeny"]
    )
    assert set(p["headersToDownstreamOnAllow"]) == {"ratelimit", "ratelimit-policy"}
    assert p["includeRequestHeadersInCheck"] == [
        "authorization",
        "x-api-key",
        "x-request-id",
        "host",
    ]


def test_provider_and_service_entry_reach_the_http_listener(
    docs: list[Doc], providers: dict[str, Any]
) -> None:
    """The provider's port is tollhouse's authz_http_listen; the ServiceEntry serves both ports."""
    cfg = _config(docs)
    http_port = int(cfg["authz_http_listen"].rsplit(":", 1)[1])
    grpc_port = int(cfg["listen"].rsplit(":", 1)[1])
    assert cfg["authz_http_listen"].startswith("127.0.0.1:")
    p = providers["tollhouse-ext-authz"]["envoyExtAuthzHttp"]
    se = find(docs, "ServiceEntry")["spec"]
    assert p["service"] in se["hosts"]
    assert p["port"] == http_port
    assert {(x["number"], x["protocol"]) for x in se["ports"]} == {
        (grpc_port, "GRPC"),
        (http_port, "HTTP"),
    }
    assert providers["tollhouse-als"]["envoyHttpAls"]["port"] == grpc_port


def test_usage_id_reaches_the_access_log_as_a_request_header(
    docs: list[Doc], providers: dict[str, Any]
) -> None:
    """No dynamic metadata from Istio: the ALS logs x-tollhouse-usage-id, tollhouse reads it."""
    als = providers["tollhouse-als"]["envoyHttpAls"]
    assert als["additionalRequestHeadersToLog"] == ["x-tollhouse-usage-id"]
    assert _config(docs)["metering"]["usage_id_from_request_header"] is True


def test_config_is_the_base_config_plus_the_http_transport(docs: list[Doc]) -> None:
    """The overlay's tollhouse.yaml differs from the base's only by the HTTP-transport keys."""
    base = yaml.safe_load((ROOT / "k8s" / "base" / "tollhouse.yaml").read_text(encoding="utf-8"))
    cfg = _config(docs)
    assert cfg.pop("authz_http_listen")
    assert cfg["metering"].pop("usage_id_from_request_header") is True
    assert cfg == base


def test_no_envoyfilter_is_left(docs: list[Doc]) -> None:
    """The provider trims the Check itself: the gRPC overlay's EnvoyFilter is gone."""
    assert not [d for d in docs if d["kind"] == "EnvoyFilter"]
    assert find(docs, "AuthorizationPolicy")["spec"]["provider"]["name"] == "tollhouse-ext-authz"
