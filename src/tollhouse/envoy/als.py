"""The ``envoy.service.accesslog.v3.AccessLogService`` servicer for grpc.aio.

Envoy's gRPC access logger streams ``StreamAccessLogsMessage``s and never waits for an answer.
Each HTTP entry is turned into a plain :class:`~tollhouse.metering.policy.LogEntry` and handed to
the ingest object (:class:`~tollhouse.metering.Metering`) once per message, so state updates are
batched into the spool's writer. Nothing here raises: a garbage message (even bytes that do not
parse: the method is registered with a tolerant deserializer), an entry without tollhouse metadata
or a failing entry is counted and the stream goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf.message import DecodeError

from tollhouse.logs import get_logger
from tollhouse.metering.metrics import ALS_ENTRIES, ALS_MESSAGES
from tollhouse.metering.policy import LogEntry

__all__ = [
    "METADATA_NAMESPACE",
    "SERVICE_NAME",
    "AccessLogServicer",
    "Ingest",
    "add_to_server",
    "to_log_entry",
]

log = get_logger(__name__)

SERVICE_NAME = "envoy.service.accesslog.v3.AccessLogService"
METADATA_NAMESPACE = "envoy.filters.http.ext_authz"

# Response flags meaning Envoy answered itself (or no upstream was reached): the entry voids.
_LOCAL_REPLY_FLAGS = frozenset({
    "failed_local_healthcheck", "no_healthy_upstream", "upstream_request_timeout", "local_reset",
    "upstream_connection_failure", "upstream_overflow", "no_route_found", "fault_injected",
    "rate_limited", "unauthorized_details", "rate_limit_service_error",
    "upstream_retry_limit_exceeded", "stream_idle_timeout", "invalid_envoy_request_headers",
    "downstream_protocol_error", "upstream_max_stream_duration_reached",
    "response_from_cache_filter", "no_filter_config_found", "duration_timeout",
    "no_cluster_found", "overload_manager", "dns_resolution_failure",
})


class Ingest(Protocol):
    """Where converted entries go (the metering object)."""

    async def ingest(self, entries: Sequence[LogEntry]) -> None:
        """Take a batch of entries that carry a usage id."""


def _decode(data: bytes) -> als_pb2.StreamAccessLogsMessage | None:
    try:
        return als_pb2.StreamAccessLogsMessage.FromString(data)
    except (DecodeError, ValueError):
        return None


def _duration_us(common: Any) -> int:
    d = common.duration if common.HasField("duration") else common.time_to_last_downstream_tx_byte
    return max(0, int(d.seconds) * 1_000_000 + int(d.nanos) // 1000)


def _usage_id(common: Any) -> str | None:
    meta = common.metadata.filter_metadata
    if METADATA_NAMESPACE not in meta:
        return None
    fields = meta[METADATA_NAMESPACE].fields
    # gRPC ext_authz sets ``usage_id``; HTTP ext_authz's dynamic_metadata_from_headers files the
    # ``x-tollhouse-usage-id`` answer header under its own name.
    value = fields.get("usage_id") or fields.get("x-tollhouse-usage-id")
    if value is None or value.WhichOneof("kind") != "string_value" or not value.string_value:
        return None
    return str(value.string_value)


def to_log_entry(entry: al.HTTPAccessLogEntry) -> LogEntry:
    """Convert one HTTP access-log entry (protobuf) into a plain :class:`LogEntry`."""
    common = entry.common_properties
    req = entry.request
    resp = entry.response
    flags = [fd.name for fd, _ in common.response_flags.ListFields()]
    code = int(resp.response_code.value) if resp.HasField("response_code") else 0
    details = resp.response_code_details
    served = (
        common.HasField("upstream_remote_address")
        and code != 0
        and not _LOCAL_REPLY_FLAGS.intersection(flags)
        and details in ("", "via_upstream")
    )
    return LogEntry(
        usage_id=_usage_id(common),
        response_code=code,
        request_bytes=int(req.request_headers_bytes) + int(req.request_body_bytes),
        response_bytes=int(resp.response_headers_bytes) + int(resp.response_body_bytes),
        duration_us=_duration_us(common),
        upstream_served=served,
        response_flags=",".join(flags),
        request_id=str(req.request_id),
        response_headers={k.lower(): v for k, v in resp.response_headers.items()},
    )


class AccessLogServicer(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """StreamAccessLogs: a client stream, answered once when Envoy closes it."""

    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        """Consume the stream; never raise (a raise would make Envoy reconnect and drop logs)."""
        try:
            async for msg in request_iterator:
                await self.handle(msg)
        except Exception:
            log.error("als.stream_failed", exc=True)
        return als_pb2.StreamAccessLogsResponse()

    async def handle(self, msg: als_pb2.StreamAccessLogsMessage | None) -> int:
        """Convert one message and hand its entries to the ingest; return how many were taken."""
        if msg is None or not isinstance(msg, als_pb2.StreamAccessLogsMessage):
            ALS_MESSAGES.labels(outcome="garbage").inc()
            return 0
        ALS_MESSAGES.labels(outcome="ok").inc()
        if msg.HasField("tcp_logs"):
            ALS_ENTRIES.labels(outcome="non_http").inc(len(msg.tcp_logs.log_entry))
        if not msg.HasField("http_logs"):
            return 0
        entries: list[LogEntry] = []
        no_meta = errors = 0
        for raw in msg.http_logs.log_entry:
            try:
                e = to_log_entry(raw)
            except Exception:
                errors += 1
                continue
            if e.usage_id is None:
                no_meta += 1  # never billed; a pending reservation of its request is voided
                if not e.request_id:
                    continue
            entries.append(e)
        with_meta = sum(1 for e in entries if e.usage_id is not None)
        if entries:
            try:
                await self._ingest.ingest(entries)
            except Exception as e:
                log.error("als.ingest_failed", error=type(e).__name__, entries=len(entries))
                errors += len(entries)
                entries = []
        ingested = with_meta if entries else 0
        _count(ingested, no_meta, errors)
        return ingested


def _count(ingested: int, no_meta: int, errors: int) -> None:
    for outcome, n in (("ingested", ingested), ("no_metadata", no_meta), ("error", errors)):
        if n:
            ALS_ENTRIES.labels(outcome=outcome).inc(n)


def add_to_server(servicer: AccessLogServicer, server: grpc.aio.Server) -> None:
    """Register the servicer with a deserializer that turns unparsable bytes into a count."""
    handler = grpc.stream_unary_rpc_method_handler(
        servicer.StreamAccessLogs,
        request_deserializer=_decode,
        response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"StreamAccessLogs": handler}),)
    )
