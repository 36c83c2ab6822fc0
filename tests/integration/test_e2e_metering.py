"""Metering end to end (issue 3): requests through real Envoy -> spool -> meter (SQLite / Redis).

One stack for most of the module (SQLite meter, 1 s grace for unconfirmed records); the Redis
outage and the full-disk scenarios start stacks of their own.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    LimitedTollhouse,
    LocalStack,
    UsageRecord,
    build_stack,
    meter_file,
    redis_stream_records,
    sqlite_meter_records,
    tollhouse_checks,
    unavailable_code,
    upstream_saw,
    usage_ids_seen,
    wait_until,
    worker_pid,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.e2e  # starts a real Envoy

CONFIRMED = UsageRecord.CONFIRMED
UNCONFIRMED = UsageRecord.UNCONFIRMED


def _case() -> str:
    return uuid.uuid4().hex[:12]


def _fast_metering(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Short grace for access-log entries and a fast forwarder, so the tests wait little."""
    metering = {**config["metering"], "unconfirmed_after_s": 1, "flush_interval_ms": 50, **extra}
    return {**config, "metering": metering}


@pytest.fixture(scope="module")
def mstack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[LocalStack]:
    """The demo stack with a SQLite meter and a 1 s grace for unconfirmed records."""
    s = build_stack(
        tmp_path_factory.mktemp(f"metering-{transport}"), _fast_metering, transport=transport
    ).start()
    try:
        yield s
    finally:
        s.stop()


def _records_by_id(stack: LocalStack) -> dict[str, UsageRecord]:
    return {r.usage_id: r for r in sqlite_meter_records(meter_file(stack))}


def _wait_metered(
    stack: LocalStack, ids: set[str], timeout_s: float = 15.0
) -> dict[str, UsageRecord]:
    """Poll the meter until every id in ``ids`` is there; return the meter's records by id."""
    return wait_until(
        lambda: _records_by_id(stack),
        lambda got: ids <= got.keys(),
        timeout_s=timeout_s,
        what=f"{len(ids)} usage ids in the meter",
    )


def _ok_usage_id(resp: Any) -> str:
    assert resp.status == 200, (resp.status, resp.body[:200])
    return str(resp.json()["headers"]["x-tollhouse-usage-id"])


def test_n_requests_make_n_confirmed_records(mstack: LocalStack) -> None:
    """N admitted requests -> exactly N CONFIRMED records with the customer and response bytes."""
    case, n = _case(), 12
    sizes: dict[str, int] = {}
    for i in range(n):
        resp = mstack.request(f"/v1/search-{case}?pad={'x' * i}", token=mstack.token("bob"))
        sizes[_ok_usage_id(resp)] = len(resp.body)
    assert len(sizes) == n  # one fresh usage id per request
    records = _wait_metered(mstack, set(sizes))
    mine = [r for r in records.values() if case in r.path]  # the path, without the query
    assert sorted(r.usage_id for r in mine) == sorted(sizes)
    for rec in mine:
        assert rec.state == CONFIRMED
        assert rec.billable
        assert (rec.customer, rec.plan, rec.feature) == ("bob", "pro", "search")
        assert dict(rec.units) == {"requests": 1}
        assert rec.response_code == 200
        assert rec.upstream_served
        # response_bytes = headers + body as Envoy sent them: the body is exactly what we read.
        assert sizes[rec.usage_id] < rec.response_bytes <= sizes[rec.usage_id] + 1024


def test_denied_requests_are_not_metered(mstack: LocalStack) -> None:
    """401 / 403 requests leave no record; an allowed request sent after them is metered."""
    case = _case()
    before = set(_records_by_id(mstack))
    denied = [
        mstack.request(f"/v1/export/{case}.csv", token=mstack.token("alice")),
        mstack.request(f"/v1/search-{case}"),
        mstack.request(f"/v1/search-{case}", api_key="th_demo_wrong"),
        mstack.request(f"/v1/reports/{case}", token=mstack.token("bob")),
    ]
    assert [r.status for r in denied] == [403, 401, 401, 403]
    sentinel = _ok_usage_id(mstack.request("/v1/search", token=mstack.token("alice")))
    records = _wait_metered(mstack, {sentinel})
    assert set(records) - before == {sentinel}
    assert [r for r in records.values() if case in r.path] == []
    assert records[sentinel].customer == "alice"


def test_header_meter_bills_the_upstream_header_value(mstack: LocalStack) -> None:
    """x-usage-tokens from the upstream becomes the tokens meter's units of that record."""
    case = _case()
    resp = mstack.request(f"/v1/reports/{case}?tokens=1234", api_key=mstack.api_key)
    assert resp.headers.get("x-usage-tokens") == "1234"
    usage_id = _ok_usage_id(resp)
    rec = _wait_metered(mstack, {usage_id})[usage_id]
    assert rec.customer == "globex"
    assert rec.state == CONFIRMED
    assert dict(rec.units) == {"requests": 1, "tokens": 1234}


def test_usage_id_header_reaches_the_upstream(mstack: LocalStack) -> None:
    """The API receives x-tollhouse-usage-id, and it is the id of the metered record."""
    case = _case()
    mstack.request(
        f"/v1/search?case={case}",
        token=mstack.token("alice"),
        headers={"x-tollhouse-usage-id": "client-chosen"},
    )
    seen = usage_ids_seen(mstack.upstream, case)
    assert len(seen) == 1
    assert seen[0] not in ("", "client-chosen")
    rec = _wait_metered(mstack, set(seen))[seen[0]]
    assert rec.path == "/v1/search"
    assert rec.customer == "alice"


class _Load:
    """Requests through Envoy from background threads until stopped; keeps (status, usage id)."""

    def __init__(self, stack: LocalStack, case: str, customer: str, threads: int = 2) -> None:
        self.stack, self.case, self.customer = stack, case, customer
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        token = self.stack.token(self.customer)
        while not self._stop.is_set():
            try:
                resp = self.stack.request(f"/v1/search?case={self.case}", token=token)
            except OSError:
                continue
            # 200: the usage id the API saw; otherwise the problem code ("" from Envoy itself).
            tag = (
                resp.json()["headers"]["x-tollhouse-usage-id"]
                if resp.status == 200
                else resp.problem_code()
            )
            with self._lock:
                self.results.append((resp.status, tag))

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def admitted(self) -> set[str]:
        with self._lock:
            return {uid for status, uid in self.results if status == 200}

    def refusals(self) -> Counter[tuple[int, str]]:
        """(status, problem code) of every request that did not get a 200."""
        with self._lock:
            return Counter(r for r in self.results if r[0] != 200)


def test_sigkill_loses_no_admitted_request(mstack: LocalStack) -> None:
    """SIGKILL mid-load, restart on the same ports: every 200 before the kill reaches the meter."""
    case = _case()
    try:
        with _Load(mstack, case, "bob") as load:
            wait_until(load.count, lambda n: n >= 60, what="load before the kill")
            mstack.tollhouse.kill()
            before = load.count()
            wait_until(load.count, lambda n: n >= before + 10, what="requests while down")
    finally:
        if not mstack.tollhouse.running:
            mstack.tollhouse.start()
    admitted = load.admitted()
    assert admitted == set(usage_ids_seen(mstack.upstream, case))  # the API saw exactly these
    assert {status for status, _ in load.refusals()} <= {503}, load.refusals()
    records = _wait_metered(mstack, admitted)
    for uid in admitted:
        assert records[uid].state in (CONFIRMED, UNCONFIRMED), records[uid]
        assert records[uid].billable
        assert records[uid].customer == "bob"


def test_sigkill_of_the_metering_worker_loses_nothing(mstack: LocalStack) -> None:
    """SIGKILL of the metering worker mid-load: no Check fails, a new worker takes over.

    Every 200, before and after the kill, reaches the meter CONFIRMED (its entry was in the
    log the new worker replayed), none UNCONFIRMED for want of its access-log entry.
    """
    case = _case()
    with _Load(mstack, case, "bob") as load:
        wait_until(load.count, lambda n: n >= 40, what="load before the kill")
        os.kill(worker_pid(mstack), signal.SIGKILL)
        before = load.count()
        wait_until(load.count, lambda n: n >= before + 40, what="requests after the kill")
    assert not load.refusals(), load.refusals()  # the Checks never depended on the worker
    admitted = load.admitted()
    records = _wait_metered(mstack, admitted)
    for uid in admitted:
        assert records[uid].state == CONFIRMED, records[uid]


def test_redis_meter_survives_a_redis_kill(tmp_path: Path) -> None:
    """Redis killed mid-load and restarted: every admitted usage id reaches the stream once."""
    redis_srv = RedisServer(tmp_path / "redis", appendonly=True).start()
    stack = build_stack(
        tmp_path / "stack", lambda c: _fast_metering(c, meter=redis_srv.url)
    ).start()
    case = _case()
    try:
        with _Load(stack, case, "alice") as load:
            wait_until(load.count, lambda n: n >= 40, what="load before the Redis kill")
            redis_srv.kill()
            before = load.count()
            wait_until(load.count, lambda n: n >= before + 40, what="load while Redis is down")
            redis_srv = RedisServer(redis_srv.dir, port=redis_srv.port, appendonly=True).start()
            back = load.count()
            wait_until(load.count, lambda n: n >= back + 20, what="load after Redis is back")
        admitted, refused = load.admitted(), load.refusals()
        # The meter being down refuses nobody (only a missed Check deadline on a busy machine).
        assert set(refused) <= {(503, "deadline_exceeded"), (503, "")}, refused
        streamed = wait_until(
            lambda: redis_stream_records(redis_srv.url),
            lambda recs: admitted <= {r.usage_id for r in recs},
            timeout_s=20,
            what="every admitted usage id in the stream",
        )
        deduped = {r.usage_id: r for r in streamed}
        extra = set(deduped) - admitted
        assert not extra, (f"{len(extra)} records billed for requests Envoy refused", refused)
        assert all(r.customer == "alice" and r.billable for r in deduped.values())
    finally:
        stack.stop()
        redis_srv.stop()


def test_spool_write_failure_is_503_and_loses_nothing(tmp_path: Path, transport: str) -> None:
    """A reservation the spool cannot write -> 503 spool_unavailable; nothing else is lost.

    The reservation (with the client's 58 KB x-request-id) is larger than the file size limit,
    a full disk for it: the writer recovers on a fresh segment, but this record fails in every
    one. The 200s before it are all metered after a restart without the limit.
    """

    def big_headers(config: dict[str, Any]) -> dict[str, Any]:
        http = {**config.get("authz_http", {}), "max_header_bytes": 65536}
        return {**_fast_metering(config), "authz_http": http}

    stack = build_stack(tmp_path, big_headers, transport=transport)
    tollhouse = stack.tollhouse
    assert isinstance(tollhouse, LimitedTollhouse)
    tollhouse.file_size_limit = 56 * 1024
    stack.start()
    case = _case()
    try:
        token = stack.token("bob")
        statuses = [
            stack.request(f"/v1/search?case={case}&i={i}", token=token).status for i in range(30)
        ]
        # The client's own x-request-id goes into the reservation (Envoy keeps it from loopback).
        resp = stack.request(
            f"/v1/search?case={case}", token=token, headers={"x-request-id": "r" * 58000}
        )
        statuses.append(resp.status)
        assert resp.status == 503, "a reservation above the limit was written"
        assert resp.json()["code"] == unavailable_code(stack, "spool_unavailable")
        assert tollhouse_checks(stack, "error", "spool_unavailable") >= 1
        assert set(statuses[:-1]) == {200}
        admitted = set(usage_ids_seen(stack.upstream, case))
        assert len(admitted) == len(statuses) - 1  # the refused request never reached the API
        stack.tollhouse.stop()
        tollhouse.file_size_limit = None
        stack.tollhouse.start()  # the disk has room again: the spool is forwarded
        records = _wait_metered(stack, admitted)
        assert all(records[u].billable for u in admitted)
        assert upstream_saw(stack.upstream, case)
    finally:
        stack.stop()
