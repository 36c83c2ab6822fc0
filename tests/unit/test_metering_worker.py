"""The metering worker process: the watermark, the log tail, and ``serve`` supervising a worker.

The App tests run ``tollhouse serve``'s composition in this process and a real worker process
(``python -m tollhouse.worker``) beside it, with a real SQLite meter.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc

from tests.servers import free_port
from tollhouse import devkeys
from tollhouse.app import App
from tollhouse.config import MeterLocation, load_config
from tollhouse.metering.factlog import FactLog, Written
from tollhouse.metering.factlog_format import MAGIC, frame, segment_path
from tollhouse.metering.facts import encode_access_log, encode_reserved
from tollhouse.metering.schema import UsageRecord
from tollhouse.metering.tail import LogTail
from tollhouse.metering.watermark import Watermark, WatermarkReader

pytestmark = pytest.mark.component  # starts tollhouse's gRPC server

ISS = "https://issuer.example"


def _ignore(_: Written) -> None:
    pass


def test_watermark_reader_sees_each_publish(tmp_path: Path) -> None:
    """A reader in another mapping reads what the writer published last, with its pid."""
    w = Watermark(tmp_path)
    r = WatermarkReader(tmp_path)
    assert r.read() is None
    w.publish(3, 100)
    assert r.read() == (3, 100, os.getpid())
    w.publish(4, 8)
    assert r.read() == (4, 8, os.getpid())
    assert Watermark(tmp_path).last_segment == 4  # a new writer never reuses segment 4


async def test_tail_reads_nothing_past_the_watermark(tmp_path: Path) -> None:
    """Bytes the writer has not published as durable (here: written behind its back) are unread."""
    log = FactLog(tmp_path, on_durable=_ignore, watermark=True)
    await asyncio.to_thread(log.open)
    log.start()
    fut = log.append([b"one", b"two"], ())
    assert fut is not None
    await fut
    seg = log.active
    await log.close()
    with segment_path(tmp_path, seg).open("ab") as f:
        f.write(b"".join(frame([b"three"])))  # a record the writer never published
    tail = LogTail(tmp_path)
    assert [p for _, p in tail.read()] == [b"one", b"two"]
    assert tail.read() == []


async def test_tail_skips_a_torn_tail_and_goes_on_to_the_next_segment(tmp_path: Path) -> None:
    """A sealed segment cut mid-record (a crash) yields its whole records, then the next one's."""
    first = segment_path(tmp_path, 1)
    first.write_bytes(MAGIC + b"".join(frame([b"a", b"b"])) + b"".join(frame([b"cut"]))[:-2])
    log = FactLog(tmp_path, on_durable=_ignore, watermark=True)
    await asyncio.to_thread(log.open)
    log.start()
    fut = log.append([b"c"], ())
    assert fut is not None
    await fut
    await log.close()
    assert LogTail(tmp_path).read() == [(1, b"a"), (1, b"b"), (2, b"c")]


def _config(tmp_path: Path, **metering: Any) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "auth": {
            "jwt": [{"issuer": ISS, "audiences": ["api"], "jwks_file": str(tmp_path / "jwks.json")}]
        },
        "meters": {"tokens": {"from_response_header": "x-usage-tokens"}},
        "features": {
            "search": {
                "rules": [{"methods": ["GET"], "path": "/v1/search"}],
                "meters": ["requests", "tokens"],
            }
        },
        "plans": {"free": {"features": ["search"], "quotas": {"tokens": 100}}},
        "customers": {"acme": {"plan": "free"}},
        "metering": {
            "spool": str(tmp_path / "spool"),
            "meter": f"sqlite:///{tmp_path}/meter.db",
            "flush_interval_ms": 50,
            **metering,
        },
        "shutdown_grace_s": 3,
    }


@pytest.fixture
async def worker_app(tmp_path: Path) -> AsyncIterator[tuple[App, str]]:
    """An App with metering in a worker process; yields it and a token for acme."""
    key = devkeys.generate_ec("k1")
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    path = tmp_path / "tollhouse.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path)))
    app = App(path, load_config(path))
    await app.start()
    try:
        yield app, devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
    finally:
        await app.stop()


async def _check(app: App, token: str) -> ea.CheckResponse:
    req = ea.CheckRequest()
    req.attributes.request.http.method = "GET"
    req.attributes.request.http.path = "/v1/search"
    req.attributes.request.http.headers["authorization"] = f"Bearer {token}"
    async with grpc.aio.insecure_channel(app.cfg.listen) as ch:
        return await ea_grpc.AuthorizationStub(ch).Check(req, timeout=5)


def _usage_id(resp: ea.CheckResponse) -> str:
    return {h.header.key: h.header.value for h in resp.ok_response.headers}["x-tollhouse-usage-id"]


def _served(usage_id: str, tokens: int) -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    e = msg.http_logs.log_entry.add()
    meta = e.common_properties.metadata.filter_metadata["envoy.filters.http.ext_authz"]
    meta.fields["usage_id"].string_value = usage_id
    e.common_properties.upstream_remote_address.socket_address.address = "127.0.0.1"
    e.response.response_code.value = 200
    e.response.response_code_details = "via_upstream"
    e.response.response_headers["x-usage-tokens"] = str(tokens)
    return msg


async def _send_log(app: App, *msgs: als_pb2.StreamAccessLogsMessage) -> None:
    async with grpc.aio.insecure_channel(app.cfg.listen) as ch:
        await als_pb2_grpc.AccessLogServiceStub(ch).StreamAccessLogs(iter(msgs), timeout=5)


def _meter(app: App) -> dict[str, list[UsageRecord]]:
    path = app.cfg.metering.meter.sqlite_file()
    if not path.exists():
        return {}
    conn = sqlite3.connect(path, timeout=5)
    try:
        rows = conn.execute("SELECT record FROM usage").fetchall()
    except sqlite3.OperationalError:
        rows = []
    finally:
        conn.close()
    out: dict[str, list[UsageRecord]] = {}
    for (blob,) in rows:
        rec = UsageRecord.FromString(blob)
        out.setdefault(rec.usage_id, []).append(rec)
    return out


async def _eventually(predicate: Any, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _worker_pid(app: App) -> int:
    front: Any = app.metering
    await _eventually(lambda: front.status().get("ready") is True)
    return int(front.status()["pid"])


async def test_worker_confirms_and_serve_exposes_its_metrics(
    worker_app: tuple[App, str],
) -> None:
    """A Check and its entry become one CONFIRMED record, written by the worker process.

    serve's /metrics carries the worker's counters (once) and /readyz the worker's status.
    """
    app, token = worker_app
    pid = await _worker_pid(app)
    assert pid != os.getpid()
    uid = _usage_id(await _check(app, token))
    await _send_log(app, _served(uid, 7))
    await _eventually(lambda: uid in _meter(app))
    [rec] = _meter(app)[uid]
    assert (rec.state, rec.units["tokens"]) == (UsageRecord.CONFIRMED, 7)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{app.cfg.admin_listen}/metrics") as r:
            text = await r.text()
        async with s.get(f"http://{app.cfg.admin_listen}/readyz") as r:
            ready = await r.json()
    assert 'tollhouse_usage_finalized_total{billable="true",state="CONFIRMED"} 1.0' in text
    assert "tollhouse_metering_worker_up 1.0" in text
    assert text.count("# HELP tollhouse_usage_finalized_total") == 1
    assert ready["metering"]["running"] is True


async def test_post_hoc_units_from_the_worker_reach_the_quota(
    worker_app: tuple[App, str],
) -> None:
    """Tokens known only from the access log, finalised in the worker, count in serve's quota.

    After 150 tokens of a 100-token quota, the next Check is 429.
    """
    app, token = worker_app
    uid = _usage_id(await _check(app, token))
    await _send_log(app, _served(uid, 150))
    await _eventually(lambda: uid in _meter(app))

    async def denied() -> bool:
        return (await _check(app, token)).denied_response.status.code == 429

    deadline = asyncio.get_running_loop().time() + 5
    while not await denied():
        assert asyncio.get_running_loop().time() < deadline, "quota not reached"
        await asyncio.sleep(0.05)


async def test_a_killed_worker_is_restarted_and_loses_nothing(
    worker_app: tuple[App, str],
) -> None:
    """SIGKILL of the worker: serve counts it and starts a new one.

    Reservations made meanwhile and their entries are finalised CONFIRMED by the new worker.
    """
    app, token = worker_app
    first = _usage_id(await _check(app, token))
    await _send_log(app, _served(first, 1))
    await _eventually(lambda: first in _meter(app))
    os.kill(await _worker_pid(app), signal.SIGKILL)
    ids = [_usage_id(await _check(app, token)) for _ in range(5)]
    await _send_log(app, *[_served(u, 1) for u in ids])
    await _eventually(lambda: set(ids) <= _meter(app).keys())
    front: Any = app.metering
    assert front.worker.restarts == 1
    meter = _meter(app)
    assert all(meter[u][0].state == UsageRecord.CONFIRMED for u in [first, *ids])


async def test_stop_drains_the_worker(tmp_path: Path) -> None:
    """Stopping serve right after the access log arrived: the worker forwards it and exits 0."""
    key = devkeys.generate_ec("k1")
    (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(key)))
    path = tmp_path / "tollhouse.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, flush_interval_ms=5000)))
    app = App(path, load_config(path))
    await app.start()
    token = devkeys.make_token(key, issuer=ISS, audience="api", subject="acme")
    await _worker_pid(app)
    uid = _usage_id(await _check(app, token))
    await _send_log(app, _served(uid, 3))
    await app.stop()
    front: Any = app.metering
    assert front.worker.status["exit_code"] == 0
    assert [r.state for r in _meter(app)[uid]] == [UsageRecord.CONFIRMED]


def test_raw_access_log_fact_round_trips() -> None:
    """The fact the Check process writes for an access-log message keeps its bytes intact."""
    from tollhouse.metering.facts import AccessLog, decode_fact

    fact = decode_fact(encode_access_log(b"\x00\xffraw", 1234, "i-1"))
    assert fact == AccessLog(b"\x00\xffraw", 1234, "i-1")
    reserved = encode_reserved(UsageRecord(usage_id="u").SerializeToString())
    assert not isinstance(decode_fact(reserved), AccessLog)


async def test_reconcile_reads_a_worker_log_with_raw_access_log(tmp_path: Path) -> None:
    """`usage --reconcile` on a worker's log decodes its raw messages: joined, not pending."""
    from tollhouse.envoy.als import entries_of
    from tollhouse.metering.report import reconcile
    from tollhouse.metering.writer import FactWriter

    writer = FactWriter(tmp_path / "spool")
    await writer.open()
    rec = UsageRecord(
        usage_id="a" * 32,
        customer="acme",
        admitted_at_ms=10,
        state=UsageRecord.RESERVED,
        units={"requests": 1},
    )
    await writer.reserve(rec)
    writer.access_log(_served(rec.usage_id, 1).SerializeToString())
    await writer.close()
    meter = MeterLocation.sqlite(tmp_path / "m.db")
    got = await reconcile(tmp_path / "spool", meter, 0, 1000, entries_of)
    assert (got.reserved, got.confirmed, got.unsent) == (0, 1, 1)
    blind = await reconcile(tmp_path / "spool", meter, 0, 1000)
    assert (blind.reserved, blind.confirmed) == (1, 0)
