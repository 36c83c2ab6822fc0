"""The pipeline of :mod:`tests.reliability.pipeline` split as ``metering.process: worker`` runs it.

``serve``'s side is a :class:`~tollhouse.metering.writer.FactWriter` (reservations, voids and raw
access-log messages into the fact log, watermark published); the worker's side is a
:class:`~tollhouse.metering.tail.TailSpool` reading up to that watermark, decoding each message
with the real access-log decoder, joining and forwarding. Both run in this process (the worker
accepts the watermark of this pid). A crash kills both. The worker never logs its
grace-period decisions: an UNCONFIRMED record is decided again after a crash unless the meter
already had it.
"""

from __future__ import annotations

from typing import Any

from envoy.service.accesslog.v3 import als_pb2

from tests.reliability.pipeline import Pipeline
from tollhouse.envoy.als import entries_of
from tollhouse.metering.policy import LogEntry
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.sinks import SqliteMeterSink
from tollhouse.metering.tail import TailSpool
from tollhouse.metering.writer import FactWriter

__all__ = ["WorkerPipeline"]

_AUTHZ = "envoy.filters.http.ext_authz"


def _message(entry: LogEntry) -> bytes:
    """The access-log message Envoy would stream for ``entry`` (one HTTP entry)."""
    msg = als_pb2.StreamAccessLogsMessage()
    e = msg.http_logs.log_entry.add()
    if entry.usage_id:
        meta = e.common_properties.metadata.filter_metadata[_AUTHZ]
        meta.fields["usage_id"].string_value = entry.usage_id
    e.request.request_id = entry.request_id
    e.response.response_code.value = entry.response_code
    if entry.upstream_served:
        e.common_properties.upstream_remote_address.socket_address.address = "127.0.0.1"
        e.response.response_code_details = "via_upstream"
    else:  # Envoy's own reply: no upstream, the ext_authz failure flag
        e.common_properties.response_flags.unauthorized_details.reason = 1
        e.response.response_code_details = "ext_authz_error"
    return msg.SerializeToString()


class WorkerPipeline(Pipeline):
    """serve's fact writer and the metering worker's tail, over one spool directory."""

    writer: FactWriter

    def _open(self) -> tuple[Any, SqliteMeterSink]:
        import os

        self.writer = FactWriter(self.root / "spool", clock=lambda: self.now, instance="stateful")
        self.run(self.writer.open())
        tail = TailSpool(
            self.root / "spool",
            finalizer=lambda: self.fin,
            on_applied=self._ignore,
            expand=entries_of,
            clock=lambda: self.now,
            instance="stateful",
            writer_pid=os.getpid(),
        )
        self.run(tail.open())
        return tail, SqliteMeterSink(self.root / "meter.db")

    def reserve(self, customer: str, request_id: str) -> UsageRecord:
        """The Check admits one request: serve's reserved fact is durable when this returns."""
        rec = self._reservation(customer, request_id)
        self.run(self.writer.reserve(rec))
        return rec

    def access_log(self, entry: LogEntry) -> None:
        """Serve writes the raw access-log message; durable when this returns."""
        self.writer.access_log(_message(entry))
        self.run(_durable(self.writer))

    def void(self, usage_id: str, request_id: str) -> None:
        """The Check gave up after its write: serve's void fact, durable when this returns."""
        self.writer.void(usage_id, request_id, "check_cancelled")
        self.run(_durable(self.writer))

    def _stop_abruptly(self) -> None:
        self.run(_durable(self.writer))
        self.run(self.writer.close())  # nothing queued: writes nothing, stops the thread
        self.run(self.spool.close())

    def close(self) -> None:
        """Stop everything and delete the folder."""
        if not self.writer.closed:
            self.run(self.writer.close())
        super().close()


async def _durable(writer: FactWriter) -> None:
    await writer.log.barrier()
