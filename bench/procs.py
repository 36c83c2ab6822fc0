"""Processes of one benchmark configuration: Envoy, tollhouse, the bare ext_authz server, Redis.

Blocking code (the harness is a plain script). Every process gets its own free port, checked
unused first (Envoy and grpcio set SO_REUSEPORT), and its output goes to a log file in the run's
work directory so a failure can be read afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.servers import port_is_free, wait_port

__all__ = [
    "BenchError",
    "Proc",
    "cpu_seconds",
    "descendants",
    "envoy_stats",
    "http_get",
    "redis_command_calls",
    "require_free",
    "start_process",
    "tree_cpu_seconds",
    "wait_http",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
BIN = Path(sys.executable).parent


class BenchError(RuntimeError):
    """A process of a configuration could not start or misbehaved."""


class Proc:
    """A child process with its log file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The end of the process's log, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def require_free(*ports: int) -> None:
    """Refuse to start on a port something already listens on."""
    for port in ports:
        if not port_is_free(port):
            raise BenchError(f"port {port} is in use")


def start_process(name: str, args: list[str], workdir: Path, ports: tuple[int, ...]) -> Proc:
    """Start ``args`` with output to ``workdir/<name>.log``; wait until each port accepts."""
    require_free(*ports)
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    proc = Proc(name, popen, log)
    try:
        for port in ports:
            wait_port(port, timeout_s=20.0)
    except TimeoutError as e:
        proc.stop()
        raise BenchError(f"{name} did not listen: {e}\n{proc.tail()}") from None
    if not proc.alive():
        raise BenchError(f"{name} exited with {popen.returncode}\n{proc.tail()}")
    return proc


def http_get(
    url: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """Status and body of a GET on loopback (0 when nothing answers)."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 (loopback)
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode(errors="replace")
    except OSError:
        return 0, ""


def wait_http(url: str, proc: Proc, timeout_s: float = 30.0) -> None:
    """Wait until ``url`` answers 200 (Envoy's /ready, tollhouse's /readyz)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited\n{proc.tail()}")
        if http_get(url, 1.0)[0] == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"{proc.name}: {url} not 200 after {timeout_s}s\n{proc.tail()}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of all threads of ``pid``, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def descendants(pid: int) -> list[int]:
    """The pids of every live process below ``pid`` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid`` itself and of its live descendants (the metering worker)."""
    rest = 0.0
    for child in descendants(pid):
        try:
            rest += cpu_seconds(child)
        except OSError:
            continue  # exited meanwhile
    return cpu_seconds(pid), rest


def envoy_stats(admin_port: int) -> dict[str, int]:
    """Every counter and gauge of an Envoy, from its admin ``/stats?format=json``."""
    status, body = http_get(f"http://127.0.0.1:{admin_port}/stats?format=json", 5.0)
    if status != 200:
        raise BenchError(f"envoy admin /stats answered {status}")
    out: dict[str, int] = {}
    for item in json.loads(body).get("stats", []):
        if "value" in item and isinstance(item["value"], int):
            out[item["name"]] = item["value"]
    return out


def redis_command_calls(port: int) -> dict[str, int]:
    """``INFO commandstats`` as ``{command: calls}`` (``info`` itself excluded)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        stats = client.info("commandstats")
    finally:
        with contextlib.suppress(Exception):
            client.close()
    calls: dict[str, int] = {}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        if name != "info" and isinstance(value, dict):
            calls[name] = int(value.get("calls", 0))
    return calls
