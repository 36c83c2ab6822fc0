"""C0: a bare grpc.aio ext_authz server that always says OK, the Python/gRPC floor.

``python -m bench.bare_authz --port P [--uvloop]``. Same server options as ``tollhouse serve``
(``grpc.so_reuseport`` off, 1000 concurrent streams); the answer is one prebuilt CheckResponse.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc
from google.rpc import code_pb2, status_pb2

__all__ = ["BareAuthz", "main", "serve"]

_OK = ea.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ea.OkHttpResponse())


class BareAuthz(ea_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Answers every Check with OK and counts them."""

    def __init__(self) -> None:
        self.checks = 0

    async def Check(self, request: ea.CheckRequest, context: Any) -> ea.CheckResponse:
        """Always OK."""
        self.checks += 1
        return _OK


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 1000)]
    )
    ea_grpc.add_AuthorizationServicer_to_server(BareAuthz(), server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="use uvloop's event loop")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
