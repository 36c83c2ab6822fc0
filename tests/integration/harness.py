"""Real processes for the Envoy integration tests, on ports from ``tests/servers.free_port``.

The process management is ``tollhouse.demo`` (one copy, shared with ``make demo``):

- :class:`Envoy`: the shipped ``envoy/sidecar.yaml`` rendered with the test's ports, run with
  ``--concurrency 1 --base-id <unique>``; ready on admin ``/ready``; ``stats()`` reads ``/stats``.
- :class:`Upstream`: an echo API in a thread; ``seen`` holds what Envoy forwarded.
- :class:`Tollhouse`: ``tollhouse serve --config FILE``; ready on ``/readyz``; ``stop()`` (SIGTERM,
  returns the exit code), ``kill()`` (SIGKILL), ``rewrite_config()`` (hot reload).
- :class:`JwksServer`: the issuer's JWKS URL; ``set_document()`` rotates keys.
- :class:`LocalStack`: all four, wired together, with the demo catalog (alice free, bob pro,
  globex enterprise with an API key).
"""

from __future__ import annotations

import copy
import json
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import redis
import yaml

from tests.servers import free_port
from tollhouse.config import parse_config, sqlite_path
from tollhouse.demo.httpd import EchoUpstream, HttpResponse, JwksServer, http_request
from tollhouse.demo.localstack import AUDIENCE, ISSUER, TRANSPORTS, LocalStack, StackPorts
from tollhouse.demo.stack import (
    EnvoyPorts,
    EnvoyProcess,
    StackError,
    TollhouseProcess,
    sidecar_http_config_path,
)
from tollhouse.metering.schema import FIELD_RECORD, STREAM_KEY, UsageRecord

__all__ = [
    "AUDIENCE",
    "ISSUER",
    "TRANSPORTS",
    "Envoy",
    "EnvoyPorts",
    "HttpResponse",
    "JwksServer",
    "LimitedTollhouse",
    "LocalStack",
    "MultiEnvoy",
    "StackError",
    "Tollhouse",
    "Upstream",
    "UsageRecord",
    "add_replica",
    "admin_call",
    "authz_failures",
    "build_stack",
    "http_request",
    "meter_file",
    "pick_ports",
    "redis_stream_records",
    "sqlite_meter_records",
    "start_stack",
    "tollhouse_checks",
    "unavailable_code",
    "upstream_saw",
    "usage_ids_seen",
    "wait_until",
    "worker_pid",
]

Envoy = EnvoyProcess
Tollhouse = TollhouseProcess
Upstream = EchoUpstream

T = TypeVar("T")


def pick_ports() -> StackPorts:
    """Eight distinct free ports for one stack."""
    return StackPorts.pick(free_port)


def start_stack(
    workdir: Path,
    *,
    jwks_refresh_s: float = 1.0,
    jwks_cooldown_s: float = 0.5,
    overrides: Mapping[str, Any] | None = None,
    transport: str = "grpc",
) -> LocalStack:
    """JWKS + upstream + tollhouse + Envoy on free ports; fast JWKS refresh for rotation tests.

    ``overrides`` replaces top-level sections of the demo config (e.g. ``{"metering": ...}``);
    ``transport`` is how Envoy asks for the Check (``grpc`` or ``http``).
    """
    stack = LocalStack(
        workdir,
        pick_ports(),
        jwks_refresh_s=jwks_refresh_s,
        jwks_cooldown_s=jwks_cooldown_s,
        overrides=overrides,
        transport=transport,
    )
    return stack.start()


def admin_call(
    stack: LocalStack, token: str, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Call the stack's admin API (``/admin`` + ``path``); fail unless 2xx; the JSON body."""
    resp = http_request(
        stack.ports.tollhouse_admin,
        "/admin" + path,
        method=method,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        body=None if body is None else json.dumps(body).encode(),
    )
    assert 200 <= resp.status < 300, (method, path, resp.status, resp.body[:300])
    doc: dict[str, Any] = resp.json()
    return doc


def wait_until(
    probe: Callable[[], T],
    accept: Callable[[T], bool],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.1,
    what: str = "condition",
) -> T:
    """Call ``probe`` until ``accept`` says yes; fail with the last value after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s; last: {value!r}")
        time.sleep(interval_s)


def upstream_saw(upstream: EchoUpstream, marker: str) -> list[dict[str, object]]:
    """Return the requests the upstream received whose path contains ``marker``."""
    return [r for r in list(upstream.seen) if marker in str(r["path"])]


def unavailable_code(stack: LocalStack, code: str) -> str:
    """The problem code a client sees when tollhouse answers 503 ``code``.

    Over gRPC it is tollhouse's own. Over HTTP, Envoy turns any 5xx of the authorization server
    into its ``status_on_error`` reply, which sidecar-http.yaml spells ``authz_unavailable``.
    """
    return code if stack.transport == "grpc" else "authz_unavailable"


def authz_failures(stack: LocalStack) -> int:
    """Checks Envoy could not get an answer for (timeouts, resets), whatever the transport."""
    stats = stack.envoy.stats()
    if stack.transport == "grpc":
        return stats.get("http.ingress_http.ext_authz.error", 0)
    return sum(
        stats.get(f"cluster.tollhouse_authz.{name}", 0)
        for name in (
            "upstream_rq_timeout",
            "upstream_cx_connect_fail",
            "upstream_rq_pending_failure_eject",
        )
    )


def tollhouse_checks(stack: LocalStack, result: str, code: str) -> float:
    """The count of tollhouse's own ``tollhouse_checks_total{result, code}``."""
    want = f'tollhouse_checks_total{{code="{code}",result="{result}"}} '
    for line in stack.tollhouse.metrics().splitlines():
        if line.startswith(want):
            return float(line.split()[-1])
    return 0.0


# --- helpers for the end-to-end metering / quota / billing / store tests ----------------------

ConfigEdit = Callable[[dict[str, Any]], dict[str, Any]]


class LimitedTollhouse(TollhouseProcess):
    """``tollhouse serve`` that can run under a file-size limit (RLIMIT_FSIZE via ``prlimit``).

    With ``file_size_limit`` set, a write that would grow any file past it fails with EFBIG, as
    on a full disk (Python ignores SIGXFSZ), even for root. ``None``: no limit.
    """

    file_size_limit: int | None = None

    def _spawn(self, args: list[str]) -> None:
        if self.file_size_limit is not None:
            args = ["prlimit", f"--fsize={self.file_size_limit}", "--", *args]
        super()._spawn(args)


def build_stack(
    workdir: Path,
    edit: ConfigEdit | None = None,
    *,
    usage_listener: bool = False,
    transport: str = "grpc",
) -> LocalStack:
    """An unstarted stack whose tollhouse config is ``edit(demo config)`` (validated again).

    ``usage_listener`` serves ``GET /v1/usage`` on the port Envoy's ``tollhouse_usage`` cluster
    points at; ``transport`` is how Envoy asks for the Check (``grpc`` or ``http``).
    """
    stack = LocalStack(
        workdir, pick_ports(), jwks_refresh_s=1.0, jwks_cooldown_s=0.5, transport=transport
    )
    config = stack.config if edit is None else edit(stack.config)
    if usage_listener:
        config["usage_listen"] = f"127.0.0.1:{stack.ports.usage}"
    parse_config(config, source="edited demo config")
    stack.tollhouse = LimitedTollhouse(stack.tollhouse.workdir, config)
    return stack


def meter_file(stack: LocalStack) -> Path:
    """The SQLite meter file of the stack's tollhouse config."""
    return sqlite_path(str(stack.config["metering"]["meter"]))


def sqlite_meter_records(path: Path) -> list[UsageRecord]:
    """Every record in a SQLite meter (empty when the file does not exist yet)."""
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=5)
    try:
        rows = conn.execute("SELECT record FROM usage ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # the sink has not created its table yet
        return []
    finally:
        conn.close()
    return [UsageRecord.FromString(r[0]) for r in rows]


def redis_stream_records(url: str) -> list[UsageRecord]:
    """Every record appended to the Redis meter stream (duplicates included)."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        entries: list[Any] = list(client.xrange(STREAM_KEY) or [])
    finally:
        client.close()
    return [UsageRecord.FromString(bytes(fields[FIELD_RECORD.encode()])) for _, fields in entries]


def usage_ids_seen(upstream: EchoUpstream, marker: str) -> list[str]:
    """The ``x-tollhouse-usage-id`` of each request the upstream received for ``marker``."""
    return [
        str(dict(r["headers"])["x-tollhouse-usage-id"])  # type: ignore[call-overload]
        for r in upstream_saw(upstream, marker)
    ]


class MultiEnvoy(EnvoyProcess):
    """Envoy whose tollhouse clusters have one endpoint per replica (round robin).

    ``replicas`` maps a cluster name (``tollhouse``, and ``tollhouse_authz`` for the HTTP
    transport) to the replicas' ports for it.
    """

    def __init__(
        self,
        workdir: Path,
        ports: EnvoyPorts,
        replicas: Mapping[str, list[int]],
        template: str | None = None,
    ) -> None:
        super().__init__(workdir, ports, template)
        doc = yaml.safe_load(self._config_text)
        for cluster in doc["static_resources"]["clusters"]:
            if cluster["name"] in replicas:
                eps = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
                for port in replicas[cluster["name"]]:
                    ep = copy.deepcopy(eps[0])
                    ep["endpoint"]["address"]["socket_address"]["port_value"] = port
                    eps.append(ep)
        self._config_text = yaml.safe_dump(doc, sort_keys=False)


class AlsToFirstEnvoy(MultiEnvoy):
    """A :class:`MultiEnvoy` whose access log goes to the first replica only (own cluster).

    As in a shared tollhouse Service: Checks are balanced over every replica, and the one
    access-log stream lands on whichever replica it connected to.
    """

    def __init__(
        self,
        workdir: Path,
        ports: EnvoyPorts,
        replicas: Mapping[str, list[int]],
        template: str | None = None,
    ) -> None:
        super().__init__(workdir, ports, replicas, template)
        doc = yaml.safe_load(self._config_text)
        clusters = doc["static_resources"]["clusters"]
        als = copy.deepcopy(next(c for c in clusters if c["name"] == "tollhouse"))
        als["name"] = als["load_assignment"]["cluster_name"] = "tollhouse_als"
        eps = als["load_assignment"]["endpoints"][0]["lb_endpoints"]
        del eps[1:]
        clusters.append(als)
        for listener in doc["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    for logger in f.get("typed_config", {}).get("access_log", []):
                        grpc = logger["typed_config"]["common_config"]["grpc_service"]
                        grpc["envoy_grpc"]["cluster_name"] = "tollhouse_als"
        self._config_text = yaml.safe_dump(doc, sort_keys=False)


def add_replica(stack: LocalStack, name: str, *, als_to_first: bool = False) -> TollhouseProcess:
    """A second ``tollhouse serve`` with the stack's config on its own ports, spool and instance.

    Also swaps the stack's (unstarted) Envoy for one that balances Checks over both replicas
    (and, with ``als_to_first``, streams the access log to the first replica only).
    """
    grpc_port, admin_port = free_port(), free_port()
    config = dict(stack.config)
    config["listen"] = f"127.0.0.1:{grpc_port}"
    config["admin_listen"] = f"127.0.0.1:{admin_port}"
    replicas = {"tollhouse": [grpc_port]}
    template = None
    if stack.transport == "http":
        http_port = free_port()
        config["authz_http_listen"] = f"127.0.0.1:{http_port}"
        replicas["tollhouse_authz"] = [http_port]
        template = sidecar_http_config_path().read_text()
    config["instance"] = name
    config.pop("usage_listen", None)
    metering = dict(config.get("metering") or {})
    metering["spool"] = str(stack.workdir / name / "spool")
    config["metering"] = metering
    replica = TollhouseProcess(stack.workdir / name, config)
    kind = AlsToFirstEnvoy if als_to_first else MultiEnvoy
    stack.envoy = kind(stack.workdir / "envoy", stack.envoy.ports, replicas, template)
    return replica


def worker_pid(stack: LocalStack) -> int:
    """The metering worker's pid, from serve's /readyz (once the worker has replayed)."""

    def readyz() -> dict[str, Any]:
        body = urllib.request.urlopen(
            f"http://127.0.0.1:{stack.ports.tollhouse_admin}/readyz", timeout=5
        ).read()
        return dict(json.loads(body).get("metering", {}))

    got = wait_until(readyz, lambda m: m.get("ready") is True, what="a ready metering worker")
    return int(got["pid"])
