"""Envoy and tollhouse configs for each benchmark configuration, built as dicts and dumped as YAML.

The ext_authz filter block is one function, so C0 (bare server) and C (tollhouse) run with
identical filter settings; only the cluster's port differs. Every route is a ``direct_response``:
the benchmark measures the auth path, not an upstream. The access log is still emitted per request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from tollhouse.config import MeteringConfig

__all__ = [
    "AUDIENCE",
    "ISSUER",
    "PATH",
    "EnvoyPorts",
    "apply_override",
    "envoy_config",
    "tollhouse_config",
]

ISSUER = "https://issuer.bench.tollhouse.test"
AUDIENCE = "bench-api"
PATH = "/v1/search?q=bench"
_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_JWT = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_ALS = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
_H2 = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
STAT_PREFIX = "bench"


@dataclass(frozen=True, slots=True)
class EnvoyPorts:
    """The listener and admin ports of one Envoy, and the ext_authz server's ports (0: none).

    ``authz`` is the gRPC port (the Check over gRPC, and the access log); ``authz_http`` the
    HTTP ext_authz port of the ``-http`` configurations.
    """

    listen: int
    admin: int
    authz: int = 0
    authz_http: int = 0


def _patterns(*names: str, prefix: str | None = None) -> dict[str, Any]:
    pats: list[dict[str, str]] = [{"exact": n} for n in names]
    if prefix is not None:
        pats.append({"prefix": prefix})
    return {"patterns": pats}


def _http_service(port: int) -> dict[str, Any]:
    """Envoy's HTTP ext_authz client, with the patterns of the shipped sidecar-http.yaml."""
    return {
        "server_uri": {
            "uri": f"http://127.0.0.1:{port}",
            "cluster": "authz_http",
            "timeout": "0.25s",
        },
        "authorization_response": {
            "allowed_upstream_headers": _patterns(
                "x-tollhouse-customer",
                "x-tollhouse-plan",
                "x-tollhouse-feature",
                "x-tollhouse-usage-id",
            ),
            "allowed_client_headers": _patterns(
                "content-type", "www-authenticate", "retry-after", "ratelimit", "ratelimit-policy"
            ),
            "allowed_client_headers_on_success": _patterns("ratelimit", "ratelimit-policy"),
            "dynamic_metadata_from_headers": _patterns(prefix="x-tollhouse-"),
        },
    }


def _ext_authz_filter(transport: str, http_port: int) -> dict[str, Any]:
    """The same filter for C0 and every C variant of a transport (the shipped sidecar configs)."""
    config: dict[str, Any] = {
        "@type": _EXT_AUTHZ,
        "transport_api_version": "V3",
        "failure_mode_allow": False,
        "status_on_error": {"code": "ServiceUnavailable"},
        "include_peer_certificate": False,
        "allowed_headers": _patterns("authorization", "x-api-key", "x-request-id", "host"),
    }
    if transport == "http":
        config["http_service"] = _http_service(http_port)
    else:
        config["grpc_service"] = {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.25s"}
    return {"name": "envoy.filters.http.ext_authz", "typed_config": config}


def _jwt_filter(jwks: dict[str, Any]) -> dict[str, Any]:
    """Envoy's native jwt_authn with the same issuer, audience and public key (inline JWKS)."""
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": _JWT,
            "providers": {
                "bench": {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "local_jwks": {"inline_string": json.dumps(jwks)},
                    "forward": True,
                }
            },
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }


def _access_log() -> list[dict[str, Any]]:
    """The gRPC access logger of the shipped sidecar.yaml, pointed at the authz cluster."""
    return [
        {
            "name": "envoy.access_loggers.http_grpc",
            "typed_config": {
                "@type": _ALS,
                "common_config": {
                    "log_name": "tollhouse",
                    "transport_api_version": "V3",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}},
                    "buffer_flush_interval": "0.1s",
                    "buffer_size_bytes": 16384,
                },
            },
        }
    ]


def _authz_cluster(port: int, name: str = "authz", http2: bool = True) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        },
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _H2,
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        }
    return cluster


def envoy_config(
    ports: EnvoyPorts,
    *,
    auth: str,
    jwks: dict[str, Any] | None = None,
    access_log: bool = False,
    transport: str = "grpc",
) -> str:
    """Envoy YAML; ``auth`` is ``none`` (A), ``jwt_authn`` (B) or ``ext_authz`` (C0, C...)."""
    filters: list[dict[str, Any]] = []
    if auth == "jwt_authn":
        if jwks is None:
            raise ValueError("jwt_authn needs the JWKS")
        filters.append(_jwt_filter(jwks))
    elif auth == "ext_authz":
        filters.append(_ext_authz_filter(transport, ports.authz_http))
    elif auth != "none":
        raise ValueError(f"unknown auth {auth!r}")
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}})
    hcm: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": STAT_PREFIX,
        "normalize_path": True,
        "merge_slashes": True,
        "generate_request_id": True,
        "preserve_external_request_id": False,
        "http_filters": filters,
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {
                    "name": "api",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                        }
                    ],
                }
            ],
        },
    }
    if access_log:
        hcm["access_log"] = _access_log()
    config: dict[str, Any] = {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports.admin}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": ports.listen}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": _clusters(ports),
        },
    }
    return yaml.safe_dump(config, sort_keys=False)


def _clusters(ports: EnvoyPorts) -> list[dict[str, Any]]:
    clusters = [_authz_cluster(ports.authz)] if ports.authz else []
    if ports.authz_http:
        clusters.append(_authz_cluster(ports.authz_http, "authz_http", http2=False))
    return clusters


def tollhouse_config(
    *,
    grpc_port: int,
    http_port: int | None = None,
    admin_port: int,
    workdir: str,
    api_key_sha256: str,
    token_cache_size: int = 100_000,
    quotas: bool = True,
    spool: bool = True,
    redis_url: str | None = None,
    meter_url: str | None = None,
    overrides: tuple[str, ...] = (),
) -> str:
    """A tollhouse config with every feature on (JWT, API key, entitlements, quotas, metering).

    ``overrides`` are ``dotted.key=<YAML value>`` settings applied last (``--set`` experiments).
    """
    plan: dict[str, Any] = {"features": ["search"]}
    if quotas:
        plan["quotas"] = {"requests": 1_000_000_000_000}
        plan["rate_limits"] = {"per_second": 10_000_000}
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{grpc_port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "authz_http_listen": f"127.0.0.1:{http_port}" if http_port else None,
        "instance": "bench",
        "shutdown_grace_s": 3,
        "auth": {
            "token_cache_size": token_cache_size,
            "jwt": [
                {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "jwks_file": "jwks.json",
                    "algorithms": ["RS256"],
                }
            ],
            "api_keys": {"keys": [{"sha256": api_key_sha256, "customer": "acme"}]},
        },
        "features": {
            "search": {
                "rules": [{"methods": ["GET"], "path": "/v1/search*"}],
                "meters": ["requests"],
            }
        },
        "plans": {"pro": plan},
        "customers": {"acme": {"plan": "pro"}},
        "counters": redis_url or "memory",
    }
    if spool:
        meter = meter_url or redis_url or f"sqlite://{workdir}/meter.db"
        cfg["metering"] = {"spool": f"{workdir}/spool", "meter": meter}
    elif "enabled" in MeteringConfig.model_fields:  # metering is on unless switched off
        cfg["metering"] = {"enabled": False}
    for item in overrides:
        apply_override(cfg, item)
    return yaml.safe_dump(cfg, sort_keys=False)


def apply_override(cfg: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=<YAML value>`` in a nested dict, creating the mappings on the way."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set wants dotted.key=value, not {item!r}")
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {item!r}: {part!r} is not a mapping")
    node[leaf] = yaml.safe_load(raw)
