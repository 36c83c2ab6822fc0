"""Real servers for tests: free ports, temp dirs, Debian's redis-server and PostgreSQL binaries.

Ports are checked free before use (Envoy and grpcio set SO_REUSEPORT, so two servers on one port
would silently share traffic).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tollhouse.demo.stack import pick_port, port_is_free, wait_port

__all__ = ["PostgresServer", "RedisServer", "free_port", "port_is_free", "wait_port"]


_STARTED: list[RedisServer | PostgresServer] = []


def _stop_all() -> None:
    """Stop every server still running when the test process exits (a timeout's SIGTERM too).

    A PostgreSQL cluster outlives the killed pytest that started it (it is a separate
    ``postgres`` user's daemon); without this, each timed-out run left one behind.
    """
    for server in reversed(_STARTED):
        with contextlib.suppress(Exception):
            server.stop()
    _STARTED.clear()


def _track(server: RedisServer | PostgresServer) -> None:
    if not any(s is server for s in _STARTED):
        _STARTED.append(server)


def _on_sigterm(signum: int, frame: object) -> None:
    """Stop the servers, then die of the signal as before (pytest would catch a SystemExit)."""
    del frame
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


atexit.register(_stop_all)
if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _on_sigterm)


def free_port() -> int:
    """A port the kernel says is free and that nothing listens on."""
    return pick_port()


@dataclass
class RedisServer:
    """A redis-server on a free port in its own directory."""

    dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    appendonly: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        if not self.port:
            self.port = free_port()
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.appendonly
            else ["--appendonly", "no"]
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _track(self)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server holds connections but answers nothing (a 'slow Redis')."""
        assert self.proc is not None
        self.proc.send_signal(19)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(18)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (make test installs it)")
    return found[-1]


@dataclass
class PostgresServer:
    """A PostgreSQL cluster on a free port, run as the ``postgres`` user (it refuses root)."""

    dir: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> PostgresServer:
        if not self.port:
            self.port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        data = self.dir / "data"
        if not data.exists():
            self._run(_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )
        wait_port(self.port)
        _track(self)
        return self

    def fresh_database_url(self, prefix: str = "t_") -> str:
        """Create an empty database on this server; return its URL."""
        import secrets

        import psycopg

        name = prefix + secrets.token_hex(6)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(_pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def running(server: RedisServer | PostgresServer) -> Iterator[RedisServer | PostgresServer]:
    """Start a server, yield it, stop it."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
