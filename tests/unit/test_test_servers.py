"""The test servers do not outlive a test process killed by a timeout's SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.servers import port_is_free

pytestmark = pytest.mark.component  # starts redis-server and PostgreSQL

_CHILD = """
import sys
import tempfile
from pathlib import Path
from tests.servers import PostgresServer, RedisServer
pg = PostgresServer(Path(sys.argv[1]) / "pg").start()
redis = RedisServer(Path(sys.argv[1]) / "redis").start()
print(pg.port, redis.port, flush=True)
import time
time.sleep(600)
"""


def test_sigterm_of_the_test_process_stops_its_postgresql_and_redis() -> None:
    """A pytest killed by `timeout` (SIGTERM) stops the clusters it started on its way out."""
    root = Path(__file__).resolve().parents[2]
    d = Path(tempfile.mkdtemp(prefix="th-pg-term-"))
    os.chmod(d, 0o755)  # noqa: S103 - the postgres user must reach its data dir
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(d)], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        pg_port, redis_port = (int(p) for p in child.stdout.readline().split())
        assert not port_is_free(pg_port)
        assert not port_is_free(redis_port)
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == -signal.SIGTERM  # it still dies of the signal
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            port_is_free(pg_port) and port_is_free(redis_port)
        ):
            time.sleep(0.1)
        assert port_is_free(pg_port), "PostgreSQL outlived its test process"
        assert port_is_free(redis_port), "redis-server outlived its test process"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
        shutil.rmtree(d, ignore_errors=True)
