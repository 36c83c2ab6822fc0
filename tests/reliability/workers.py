"""The metering worker's pid, as ``serve`` reports it on ``/readyz``."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.integration.harness import LocalStack, wait_until

__all__ = ["worker_pid"]


def worker_pid(stack: LocalStack) -> int:
    """The metering worker's pid, once serve says the worker is ready (it has replayed)."""

    def readyz() -> dict[str, Any]:
        body = urllib.request.urlopen(
            f"http://127.0.0.1:{stack.ports.tollhouse_admin}/readyz", timeout=5).read()
        return dict(json.loads(body).get("metering", {}))

    got = wait_until(readyz, lambda m: m.get("ready") is True, what="a ready metering worker")
    return int(got["pid"])
