"""The Metering object end to end: reserve, access log, sweep, forward, stop, restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from envoy.config.core.v3 import address_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import struct_pb2

from tests.servers import free_port
from tollhouse.config import Config, MeterLocation, parse_config
from tollhouse.envoy.als import METADATA_NAMESPACE, AccessLogServicer
from tollhouse.metering import Metering, RedisStreamSink
from tollhouse.metering.report import UsageRow, reconcile, usage_report


def _cfg(tmp: Path) -> Config:
    return parse_config(
        {
            "metering": {
                "spool": str(tmp / "spool"),
                "meter": f"sqlite:///{tmp / 'meter.db'}",
                "unconfirmed_after_s": 30,
                "flush_interval_ms": 10,
                "batch_size": 16,
            }
        }
    )


def _msg(usage_ids: list[str]) -> als_pb2.StreamAccessLogsMessage:
    m = als_pb2.StreamAccessLogsMessage()
    for uid in usage_ids:
        e = m.http_logs.log_entry.add()
        meta = struct_pb2.Struct()
        meta.update({"usage_id": uid})
        e.common_properties.metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(meta)
        e.common_properties.upstream_remote_address.CopyFrom(
            address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address="10.0.0.1", port_value=80)
            )
        )
        e.response.response_code.value = 200
        e.response.response_code_details = "via_upstream"
    return m


async def _reserve(m: Metering, n: int, customer: str = "acme") -> list[str]:
    ids = []
    for _ in range(n):
        rec = m.build_reservation(
            customer=customer,
            plan="p",
            feature="any",
            method="GET",
            path="/",
            request_id="",
            decision_id="d",
        )
        await m.reserve(rec)
        ids.append(rec.usage_id)
    return ids


async def _until(m: Metering, key: str, value: int) -> dict[str, int]:
    for _ in range(1200):
        counts = await m.spool.counts()
        if counts[key] == value:
            return counts
        await asyncio.sleep(0.05)
    raise AssertionError(f"spool never reached {key}={value}")


async def test_admitted_equals_metered(tmp_path: Path) -> None:
    """40 logged + 10 never logged requests all reach the meter: 50 billed, 40 confirmed."""
    now = [2_000_000_000.0]
    m = Metering(_cfg(tmp_path), clock=lambda: now[0], instance="i")
    await m.start()
    ids = await _reserve(m, 50)
    servicer = AccessLogServicer(m)
    assert await servicer.handle(_msg(ids[:40])) == 40
    now[0] += 31  # the other 10 pass the grace period
    await _until(m, "unsent", 0)
    await _until(m, "RESERVED", 0)
    assert await m.stop(deadline_s=2)
    url = MeterLocation.sqlite(tmp_path / "meter.db")
    rows = await usage_report(url, 0, 2**62, None)
    rec = await reconcile(tmp_path / "spool", url, 0, 2**62)
    assert rows == [UsageRow("acme", "requests", 50, 50)]
    assert (rec.confirmed, rec.unconfirmed, rec.reserved, rec.unsent) == (40, 10, 0, 0)


async def test_stop_keeps_unsent_records_and_restart_delivers(tmp_path: Path) -> None:
    """With the meter down, stop keeps final records in the spool; a restart delivers them."""
    now = [2_000_000_000.0]
    dead = RedisStreamSink(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    first = Metering(
        _cfg(tmp_path), clock=lambda: now[0], instance="i", sink=dead, max_backoff_s=0.1
    )
    await first.start()
    ids = await _reserve(first, 20)
    await AccessLogServicer(first).handle(_msg(ids))
    await _until(first, "unsent", 20)
    assert not await first.stop(deadline_s=0.5)
    second = Metering(_cfg(tmp_path), clock=lambda: now[0], instance="i")
    await second.start()
    await _until(second, "unsent", 0)
    await second.stop(deadline_s=1)
    rows = await usage_report(MeterLocation.sqlite(tmp_path / "meter.db"), 0, 2**62, "acme")
    assert rows == [UsageRow("acme", "requests", 20, 20)]
