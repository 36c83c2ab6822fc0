"""The ``envoy.service.auth.v3.Authorization`` servicer for grpc.aio.

It decodes, asks the :class:`~tollhouse.check.Checker`, encodes. Any failure becomes a 503 deny:
never a gRPC error, never an OK. The deadline is the Checker's: it bounds the only awaits that can
wait on something else (the spool write, a quota lease), so an in-memory decision pays no timer.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc

from tollhouse.check import Checker
from tollhouse.decision import unavailable
from tollhouse.envoy.answer import observe
from tollhouse.envoy.codec import decode_check, encode_decision
from tollhouse.logs import get_logger

__all__ = ["AuthorizationServicer", "add_to_server"]

log = get_logger(__name__)


class AuthorizationServicer(ea_grpc.AuthorizationServicer):  # type: ignore[misc]
    """ext_authz Check."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker
        self.in_flight = 0

    async def Check(self, request: ea.CheckRequest, context: Any) -> ea.CheckResponse:
        """Answer one CheckRequest."""
        start = time.perf_counter()
        self.in_flight += 1
        try:
            try:
                decision = await self.checker.check(decode_check(request))
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
        observe(decision, start)
        return response


def add_to_server(servicer: AuthorizationServicer, server: grpc.aio.Server) -> None:
    """Register the servicer."""
    ea_grpc.add_AuthorizationServicer_to_server(servicer, server)
