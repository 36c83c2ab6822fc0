"""The ``envoy.service.auth.v3.Authorization`` servicer for grpc.aio.

It decodes, asks the :class:`~tollhouse.check.Checker` under a deadline, encodes. Any failure,
including a missed deadline, becomes a 503 deny: never a gRPC error, never an OK.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc

from tollhouse.check import Checker
from tollhouse.decision import Allow, unavailable
from tollhouse.envoy.codec import decode_check, encode_decision
from tollhouse.logs import get_logger
from tollhouse.metrics import CHECK_LATENCY, CHECKS

__all__ = ["AuthorizationServicer", "add_to_server"]

log = get_logger(__name__)


class AuthorizationServicer(ea_grpc.AuthorizationServicer):  # type: ignore[misc]
    """ext_authz Check."""

    def __init__(self, checker: Checker, deadline_s: float) -> None:
        self.checker = checker
        self.deadline_s = deadline_s
        self.in_flight = 0

    async def Check(self, request: ea.CheckRequest, context: Any) -> ea.CheckResponse:
        """Answer one CheckRequest."""
        start = time.perf_counter()
        self.in_flight += 1
        try:
            try:
                info = decode_check(request)
                async with asyncio.timeout(self.deadline_s):
                    decision = await self.checker.check(info)
            except TimeoutError:
                decision = unavailable("deadline_exceeded", "tollhouse could not decide in time")
            except Exception:
                log.error("check.decode_failed", exc=True)
                decision = unavailable("internal_error", "tollhouse could not decide")
            try:
                response = encode_decision(decision)
            except Exception:
                log.error("check.encode_failed", exc=True)
                response = encode_decision(unavailable("internal_error", "encoding failed"))
                decision = unavailable("internal_error", "encoding failed")
        finally:
            self.in_flight -= 1
        if isinstance(decision, Allow):
            CHECKS.labels("allowed", "ok").inc()
        else:
            CHECKS.labels("denied" if decision.status < 500 else "error", decision.code).inc()
        CHECK_LATENCY.observe(time.perf_counter() - start)
        return response


def add_to_server(servicer: AuthorizationServicer, server: grpc.aio.Server) -> None:
    """Register the servicer."""
    ea_grpc.add_AuthorizationServicer_to_server(servicer, server)
