"""One bad access-log entry loses nothing else (issue 11), through a real Envoy.

A client's own ``x-request-id`` from a loopback address is kept by Envoy and logged byte for byte
in the access log's ``request_id`` string field. Bytes that are valid in HTTP (obs-text) but not
UTF-8 make protobuf refuse the whole ``StreamAccessLogsMessage``: before the entry-by-entry
decoder, every other customer's entry in that message was lost.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import (
    LocalStack,
    UsageRecord,
    build_stack,
    meter_file,
    sqlite_meter_records,
    wait_until,
)

pytestmark = pytest.mark.e2e  # starts a real Envoy

_OBS_TEXT = b"\xff\xfe"  # valid in an HTTP header value, never valid UTF-8


def _fast_metering(config: dict[str, Any]) -> dict[str, Any]:
    """A 1 s grace: a record whose entry was lost shows up UNCONFIRMED quickly."""
    metering = {**config["metering"], "unconfirmed_after_s": 1, "flush_interval_ms": 50}
    return {**config, "metering": metering}


@pytest.fixture(scope="module")
def astack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The demo stack (SQLite meter, the shipped sidecar.yaml) with a 1 s grace."""
    s = build_stack(tmp_path_factory.mktemp("als-malformed"), _fast_metering).start()
    try:
        yield s
    finally:
        s.stop()


def _request(stack: LocalStack, path: str, token: str, request_id: bytes | None) -> str:
    """GET through Envoy, optionally with raw ``x-request-id`` bytes; return the usage id seen."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.envoy, timeout=10)
    try:
        conn.putrequest("GET", path)
        conn.putheader("authorization", f"Bearer {token}")
        if request_id is not None:
            conn.putheader("x-request-id", request_id)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, (resp.status, body[:200])
    echoed = json.loads(body)["headers"]
    if request_id is not None:  # Envoy passed the client's bytes on (so it also logs them)
        assert echoed["x-request-id"].encode("latin-1", "replace")[:2] == _OBS_TEXT
    return str(echoed["x-tollhouse-usage-id"])


def _metrics(stack: LocalStack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(stack.tollhouse.metrics()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_non_utf8_request_id_costs_no_victim_record(astack: LocalStack) -> None:
    """60 metered requests interleaved with 20 carrying a non-UTF-8 x-request-id: all 80 CONFIRMED.

    The victims' entries share access-log messages with the attacker's; each attacker entry's
    bad field is counted as ``invalid_utf8``, no message is counted as garbage, and the
    attacker's own admitted requests are metered too (with the rest of what their entries carry).
    """
    case, normal, poisoned = uuid.uuid4().hex[:12], 60, 20
    tokens = {c: astack.token(c) for c in ("alice", "bob")}
    before = _metrics(astack)
    victims: dict[str, str] = {}
    attackers: set[str] = set()
    for i in range(normal + poisoned):
        if i % 4 == 3:
            rid = _OBS_TEXT + uuid.uuid4().hex.encode()
            attackers.add(_request(astack, f"/v1/search?case={case}&a={i}", tokens["bob"], rid))
        else:
            customer = ("alice", "bob")[i % 2]
            uid = _request(astack, f"/v1/search?case={case}&v={i}", tokens[customer], None)
            victims[uid] = customer
    assert (len(victims), len(attackers)) == (normal, poisoned)
    wanted = set(victims) | attackers
    records = wait_until(
        lambda: {r.usage_id: r for r in sqlite_meter_records(meter_file(astack))},
        lambda got: wanted <= got.keys(),
        timeout_s=20,
        what="every usage id in the meter",
    )
    states = {uid: UsageRecord.State.Name(records[uid].state) for uid in wanted}
    assert set(states.values()) == {"CONFIRMED"}, [u for u, s in states.items() if s != "CONFIRMED"]
    for uid, customer in victims.items():
        rec = records[uid]
        assert (rec.customer, rec.response_code, rec.upstream_served) == (customer, 200, True)
        assert rec.billable
        assert rec.response_bytes > 0
    assert all(records[u].customer == "bob" and records[u].billable for u in attackers)
    after = _metrics(astack)
    assert _delta(before, after, "tollhouse_als_malformed_total", reason="invalid_utf8") == poisoned
    assert _delta(before, after, "tollhouse_als_messages_total", outcome="recovered") >= 1
    assert _delta(before, after, "tollhouse_als_messages_total", outcome="garbage") == 0
    assert _delta(before, after, "tollhouse_als_entries_total", outcome="unreadable") == 0
