"""C0 / C0-http: bare ext_authz servers that always say OK, the Python floors of each transport.

``python -m bench.bare_authz --port P [--http-port H] [--uvloop]``.

- ``--port``: a grpc.aio server with the same options as ``tollhouse serve`` (``grpc.so_reuseport``
  off, 1000 concurrent streams) answering every Check with one prebuilt OK, and a counting
  access-log sink (``StreamAccessLogs`` counts the entries of each message), so the floor pays for
  receiving the access log as tollhouse does.
- ``--http-port``: also an asyncio HTTP/1.1 ext_authz server on the same loop, parsed by httptools
  as tollhouse's is, answering every request ``200`` with ``content-length: 0`` (keep-alive).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httptools
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc
from google.rpc import code_pb2, status_pb2

__all__ = ["BareAccessLog", "BareAuthz", "BareHttpAuthz", "main", "serve"]

_OK = ea.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ea.OkHttpResponse())
_HTTP_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class BareAuthz(ea_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Answers every Check with OK and counts them."""

    def __init__(self) -> None:
        self.checks = 0

    async def Check(self, request: ea.CheckRequest, context: Any) -> ea.CheckResponse:
        """Always OK."""
        self.checks += 1
        return _OK


class BareAccessLog(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """Counts the HTTP entries of every access-log message, and does nothing else."""

    def __init__(self) -> None:
        self.entries = 0

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        """Consume the stream."""
        async for msg in request_iterator:
            self.entries += len(msg.http_logs.log_entry)
        return als_pb2.StreamAccessLogsResponse()


class BareHttpAuthz(asyncio.Protocol):
    """One connection: every complete request is answered 200 at once, in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(_HTTP_OK)


async def serve(port: int, http_port: int | None = None) -> None:
    """Serve on 127.0.0.1 until SIGTERM or SIGINT."""
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 1000)]
    )
    ea_grpc.add_AuthorizationServicer_to_server(BareAuthz(), server)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(BareAccessLog(), server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    loop = asyncio.get_running_loop()
    http = None
    if http_port is not None:
        http = await loop.create_server(BareHttpAuthz, "127.0.0.1", http_port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if http is not None:
        http.close()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http-port", type=int, default=None)
    parser.add_argument("--uvloop", action="store_true", help="use uvloop's event loop")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.http_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
