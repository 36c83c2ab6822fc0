"""The whole local stack on free ports: JWKS server, echo upstream, ``tollhouse serve``, Envoy.

Used by ``tollhouse demo`` and by the Envoy integration tests (one copy of the wiring). Keys and the
API key are generated per run; nothing secret is written outside ``workdir``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tollhouse.config import parse_config
from tollhouse.demo.httpd import EchoUpstream, HttpResponse, JwksServer, http_request
from tollhouse.demo.stack import (
    EnvoyPorts,
    EnvoyProcess,
    TollhouseProcess,
    pick_port,
    render_tollhouse_config,
    sidecar_http_config_path,
)
from tollhouse.devkeys import DevKey, generate_rsa, jwks, make_token, write_private_key
from tollhouse.keyhash import hash_api_key

__all__ = ["AUDIENCE", "ISSUER", "TRANSPORTS", "LocalStack", "StackPorts", "demo_config_template"]

ISSUER = "https://issuer.demo.tollhouse.test"
AUDIENCE = "demo-api"
TRANSPORTS = ("grpc", "http")


def demo_config_template() -> str:
    """Return the packaged tollhouse config template (``${name}`` placeholders)."""
    return resources.files("tollhouse.demo").joinpath("tollhouse.yaml").read_text("utf-8")


@dataclass(frozen=True)
class StackPorts:
    """One free port per listener of the stack."""

    envoy: int
    envoy_admin: int
    tollhouse: int
    tollhouse_admin: int
    upstream: int
    usage: int
    jwks: int
    authz_http: int

    @classmethod
    def pick(cls, picker: Callable[[], int] = pick_port) -> StackPorts:
        """Distinct free ports from ``picker``."""
        chosen: list[int] = []
        while len(chosen) < 8:
            port = picker()
            if port not in chosen:
                chosen.append(port)
        return cls(*chosen)


class LocalStack:
    """Start and stop the four parts in dependency order; build tokens; send requests via Envoy.

    ``overrides`` replaces whole top-level sections of the demo config (validated again), so a
    test can point ``metering`` at Redis or change ``plans`` before tollhouse starts.
    ``transport`` is how Envoy asks for the Check: ``grpc`` (``envoy/sidecar.yaml``) or ``http``
    (``envoy/sidecar-http.yaml`` and tollhouse's ``authz_http_listen``); the access log is gRPC.
    ``admin``: also an entitlement store (SQLite in ``workdir``, migrated before tollhouse starts)
    and the admin API on the admin port, with a fresh token in :attr:`admin_token_file`.
    """

    def __init__(
        self,
        workdir: Path,
        ports: StackPorts,
        *,
        jwks_refresh_s: float = 300.0,
        jwks_cooldown_s: float = 10.0,
        key: DevKey | None = None,
        overrides: Mapping[str, Any] | None = None,
        transport: str = "grpc",
        admin: bool = False,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        self.workdir = workdir
        self.ports = ports
        self.transport = transport
        self.key = key or generate_rsa()  # kid: its thumbprint, what `dev token` computes
        self.api_key = "th_demo_" + secrets.token_urlsafe(24)
        self.jwks = JwksServer(ports.jwks, jwks(self.key))
        self.upstream = EchoUpstream(ports.upstream)
        values = {
            "grpc_port": ports.tollhouse,
            "admin_port": ports.tollhouse_admin,
            "jwks_port": ports.jwks,
            "usage_port": ports.usage,  # for the customer usage listener
            "jwks_refresh_s": jwks_refresh_s,
            "jwks_cooldown_s": jwks_cooldown_s,
            "api_key_sha256": hash_api_key(self.api_key),
            "workdir": workdir / "tollhouse",
        }
        config = render_tollhouse_config(demo_config_template(), values)
        if transport == "http":
            config["authz_http_listen"] = f"127.0.0.1:{ports.authz_http}"
        self.admin_token: str | None = None
        self.admin_token_file = workdir / "tollhouse" / "admin-token"
        if admin:
            self.admin_token = secrets.token_urlsafe(32)
            config["store"] = {
                "url": f"sqlite://{workdir / 'tollhouse' / 'store.db'}",
                "poll_interval_ms": 200,
            }
            config["admin"] = {"token_file": str(self.admin_token_file)}
        if overrides:  # top-level sections replaced whole, e.g. {"metering": {...}}
            config = {**config, **overrides}
            parse_config(config, source="demo config with overrides")
        self.tollhouse = TollhouseProcess(workdir / "tollhouse", config)
        envoy_ports = EnvoyPorts(
            listen=ports.envoy,
            admin=ports.envoy_admin,
            tollhouse=ports.tollhouse,
            upstream=ports.upstream,
            usage=ports.usage,
            authz_http=ports.authz_http,
        )
        template = sidecar_http_config_path().read_text() if transport == "http" else None
        self.envoy = EnvoyProcess(workdir / "envoy", envoy_ports, template)

    def start(self) -> LocalStack:
        """JWKS and upstream first, then tollhouse (ready = keys loaded), then Envoy."""
        try:
            self.jwks.start()
            self.upstream.start()
            self._prepare_store()
            self.tollhouse.start()
            self.envoy.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_store(self) -> None:
        """Write the admin token (mode 0600) and migrate the store, as an operator would."""
        if self.admin_token is None:
            return
        from tollhouse.store.schema import migrate

        self.admin_token_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.admin_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.admin_token + "\n")
        asyncio.run(migrate(str(self.tollhouse.config["store"]["url"])))

    def write_keys(self, folder: Path) -> tuple[Path, Path]:
        """Keep the signing key (PEM, 0600) and its JWKS in ``folder``; return both paths.

        ``tollhouse dev token SUB --key <folder>/signing-key.pem`` then mints tokens this stack
        accepts (the key id is the key's thumbprint either way).
        """
        pem, doc = folder / "signing-key.pem", folder / "jwks.json"
        write_private_key(self.key, pem)
        doc.write_text(json.dumps(jwks(self.key), indent=2) + "\n", encoding="utf-8")
        return pem, doc

    @property
    def admin_url(self) -> str:
        """The admin API's base URL (tollhouse's admin port, ``/admin``)."""
        return f"http://127.0.0.1:{self.ports.tollhouse_admin}/admin"

    def stop(self) -> int | None:
        """Stop everything started; returns tollhouse's exit code (0 after a clean drain)."""
        self.envoy.stop()
        rc = self.tollhouse.stop()
        self.upstream.stop()
        self.jwks.stop()
        return rc

    @property
    def config(self) -> dict[str, Any]:
        """The tollhouse config as last written (a copy: edit it and pass it to ``reconfigure``)."""
        return dict(self.tollhouse.config)

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Rewrite tollhouse's config file; the running server hot-reloads it."""
        self.tollhouse.rewrite_config(config)

    def token(self, subject: str, *, key: DevKey | None = None, **kwargs: Any) -> str:
        """Sign a JWT from the demo issuer for ``subject`` (extra ``make_token`` kwargs pass on)."""
        kwargs.setdefault("issuer", ISSUER)
        kwargs.setdefault("audience", AUDIENCE)
        return make_token(key or self.key, subject=subject, **kwargs)

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        token: str | None = None,
        api_key: str | None = None,
    ) -> HttpResponse:
        """One HTTP request through Envoy's listener."""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["authorization"] = f"Bearer {token}"
        if api_key is not None:
            hdrs["x-api-key"] = api_key
        return http_request(self.ports.envoy, path, method=method, headers=hdrs)

    @property
    def base_url(self) -> str:
        """Envoy's listener as an http:// URL."""
        return f"http://127.0.0.1:{self.ports.envoy}"
