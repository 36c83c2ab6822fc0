"""Access-log ingestion benchmark (issue 3's bar): entries per second per core, in process.

``python -m bench.bench_als [--entries N] [--batch B] [--out F]``

A real :class:`tollhouse.metering.Metering` (SQLite spool, SQLite meter) with N reservations
already written, and its real ``AccessLogService`` servicer on a grpc.aio server on a free
loopback port; a client streams N HTTP access-log entries (B per ``StreamAccessLogsMessage``, as
Envoy's buffered logger does) that confirm those reservations. Reported: wall time until every
reservation is CONFIRMED, entries/s, and the process's CPU seconds per entry (client and server
share the process, so CPU per entry is an upper bound for the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import address_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import struct_pb2

from tollhouse.config import parse_config
from tollhouse.demo.stack import pick_port
from tollhouse.envoy.als import METADATA_NAMESPACE, AccessLogServicer, add_to_server
from tollhouse.metering import Metering

__all__ = ["main", "run"]


def _entry(usage_id: str) -> al.HTTPAccessLogEntry:
    e = al.HTTPAccessLogEntry()
    c = e.common_properties
    meta = struct_pb2.Struct()
    meta.update({"usage_id": usage_id, "customer": "acme", "plan": "pro", "feature": "search"})
    c.metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(meta)
    c.upstream_remote_address.CopyFrom(
        address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=8000)
        )
    )
    c.duration.FromMicroseconds(900)
    e.request.request_id = usage_id
    e.request.request_headers_bytes = 180
    e.response.response_code.value = 200
    e.response.response_code_details = "via_upstream"
    e.response.response_headers_bytes = 120
    e.response.response_body_bytes = 2048
    return e


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(entries: int, batch: int, workdir: Path) -> dict[str, Any]:
    """Reserve ``entries`` records, stream their access-log entries, time the confirmation."""
    cfg = parse_config(
        {
            "features": {"search": [{"path": "/v1/search"}]},
            "metering": {
                "spool": str(workdir / "spool"),
                "meter": f"sqlite:///{workdir}/meter.db",
                "unconfirmed_after_s": 3600,
            },
        }
    )
    m = Metering(cfg, instance="bench")
    await m.start()
    ids = []
    for i in range(0, entries, 500):
        recs = [
            m.build_reservation(
                customer="acme",
                plan="pro",
                feature="search",
                method="GET",
                path="/v1/search",
                request_id=f"r{j}",
                decision_id="d",
            )
            for j in range(i, min(entries, i + 500))
        ]
        await asyncio.gather(*(m.reserve(r) for r in recs))
        ids += [r.usage_id for r in recs]
    msgs = []
    for i in range(0, entries, batch):
        msg = als_pb2.StreamAccessLogsMessage()
        msg.identifier.log_name = "tollhouse"
        msg.http_logs.log_entry.extend(_entry(u) for u in ids[i : i + batch])
        msgs.append(msg)
    server = grpc.aio.server()
    add_to_server(AccessLogServicer(m), server)
    port = pick_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        await als_pb2_grpc.AccessLogServiceStub(ch).StreamAccessLogs(iter(msgs), timeout=600)
    while (await m.spool.counts())["RESERVED"] > 0:  # noqa: ASYNC110 - polls the spool itself
        await asyncio.sleep(0.005)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    counts = await m.spool.counts()
    await server.stop(None)
    await m.stop(deadline_s=5)
    return {
        "entries": entries,
        "batch": batch,
        "wall_s": round(wall, 3),
        "entries_per_s": round(entries / wall),
        "cpu_us_per_entry": round(cpu / entries * 1e6, 1),
        "still_reserved": counts["RESERVED"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-als-") as d:
        result = asyncio.run(run(args.entries, args.batch, Path(d)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if result["still_reserved"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
