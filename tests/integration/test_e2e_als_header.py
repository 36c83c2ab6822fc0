"""The usage id from the logged request header (Istio's ``envoyExtAuthzHttp`` shape), real Envoy.

Istio's HTTP ext_authz provider cannot turn the authz answer into dynamic metadata, so the access
log carries no ``envoy.filters.http.ext_authz`` metadata; the usage id reaches it as the upstream
request header ``x-tollhouse-usage-id`` (set by tollhouse, overwriting the client's), logged via
``additional_request_headers_to_log``. Here Envoy runs the shipped sidecar (gRPC ext_authz to
tollhouse) with that header logged, and its access log goes through a relay that records every
entry and forwards it to tollhouse without the ext_authz metadata: what tollhouse receives is
exactly the Istio shape, produced by a real Envoy. tollhouse runs with
``metering.usage_id_from_request_header: true``.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from tests.integration.harness import (
    Envoy,
    EnvoyPorts,
    LocalStack,
    UsageRecord,
    build_stack,
    http_request,
    meter_file,
    sqlite_meter_records,
    usage_ids_seen,
    wait_until,
)
from tests.servers import free_port
from tollhouse.envoy.als import METADATA_NAMESPACE, SERVICE_NAME, USAGE_ID_HEADER

pytestmark = pytest.mark.e2e  # starts a real Envoy


class _RelayEnvoy(Envoy):
    """The shipped sidecar, its access log sent to the relay and logging the usage-id header."""

    def __init__(self, workdir: Path, ports: EnvoyPorts, relay_port: int) -> None:
        super().__init__(workdir, ports)
        doc = yaml.safe_load(self._config_text)
        for listener in doc["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    for log in f["typed_config"].get("access_log", []):
                        cfg = log["typed_config"]
                        cfg["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = (
                            "als_relay"
                        )
                        cfg["additional_request_headers_to_log"] = [USAGE_ID_HEADER]
        clusters = doc["static_resources"]["clusters"]
        relay = copy.deepcopy(next(c for c in clusters if c["name"] == "tollhouse"))
        relay["name"] = relay["load_assignment"]["cluster_name"] = "als_relay"
        endpoint = relay["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = relay_port
        clusters.append(relay)
        self._config_text = yaml.safe_dump(doc, sort_keys=False)


class _Relay:
    """An AccessLogService that records entries and forwards them without ext_authz metadata.

    Entries whose path contains ``drop_marker`` are recorded but not forwarded (their access-log
    entry is "lost", so their reservation stays pending).
    """

    def __init__(self, port: int, target: str, drop_marker: str) -> None:
        self.port = port
        self.drop_marker = drop_marker
        self.entries: list[al.HTTPAccessLogEntry] = []
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(target)
        self._stub = als_pb2_grpc.AccessLogServiceStub(self._channel)
        self._server = grpc.server(ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
        handler = grpc.stream_unary_rpc_method_handler(
            self._stream,
            request_deserializer=als_pb2.StreamAccessLogsMessage.FromString,
            response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"StreamAccessLogs": handler}),)
        )
        self._server.add_insecure_port(f"127.0.0.1:{port}")

    def start(self) -> _Relay:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0)
        self._channel.close()

    def _stream(
        self, messages: Iterable[als_pb2.StreamAccessLogsMessage], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        with contextlib.suppress(grpc.RpcError):  # shutting down
            self._stub.StreamAccessLogs(self._strip(m) for m in messages)
        return als_pb2.StreamAccessLogsResponse()

    def _strip(self, msg: als_pb2.StreamAccessLogsMessage) -> als_pb2.StreamAccessLogsMessage:
        out = als_pb2.StreamAccessLogsMessage()
        out.identifier.CopyFrom(msg.identifier)
        for entry in msg.http_logs.log_entry:
            with self._lock:
                self.entries.append(copy.deepcopy(entry))
            if self.drop_marker in entry.request.path:
                continue
            forwarded = out.http_logs.log_entry.add()
            forwarded.CopyFrom(entry)
            meta = forwarded.common_properties.metadata.filter_metadata
            if METADATA_NAMESPACE in meta:
                del meta[METADATA_NAMESPACE]
        return out

    def logged(self, marker: str) -> list[al.HTTPAccessLogEntry]:
        with self._lock:
            return [e for e in self.entries if marker in e.request.path]


@pytest.fixture(scope="module")
def relayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, _Relay]]:
    """Demo stack, usage_id_from_request_header on, its access log through the relay."""

    def edit(config: dict[str, Any]) -> dict[str, Any]:
        metering = {
            **config["metering"],
            "unconfirmed_after_s": 1,
            "flush_interval_ms": 50,
            "usage_id_from_request_header": True,
        }
        return {**config, "metering": metering}

    workdir = tmp_path_factory.mktemp("als-header")
    stack = build_stack(workdir, edit)
    relay = _Relay(free_port(), f"127.0.0.1:{stack.ports.tollhouse}", drop_marker="lost-")
    stack.envoy = _RelayEnvoy(stack.envoy.workdir, stack.envoy.ports, relay.port)
    relay.start()
    try:
        stack.start()
        try:
            yield stack, relay
        finally:
            stack.stop()
    finally:
        relay.stop()


def _records(stack: LocalStack, ids: set[str]) -> dict[str, UsageRecord]:
    return wait_until(
        lambda: {r.usage_id: r for r in sqlite_meter_records(meter_file(stack))},
        lambda got: ids <= got.keys(),
        timeout_s=20,
        what=f"{len(ids)} usage ids in the meter",
    )


def test_header_usage_id_confirms_and_is_never_the_clients(
    relayed: tuple[LocalStack, _Relay],
) -> None:
    """Admitted requests carrying a forged header: Envoy logs tollhouse's id; all CONFIRMED.

    The forged value looks like a usage id; the access log shows the header as ext_authz left it
    (tollhouse's), which is the usage id the upstream saw and the one confirmed.
    """
    stack, relay = relayed
    case = uuid.uuid4().hex[:12]
    token = stack.token("bob")
    forged = {uuid.uuid4().hex for _ in range(8)}
    for i, fake in enumerate(sorted(forged)):
        resp = stack.request(
            f"/v1/search?case={case}&i={i}", token=token, headers={USAGE_ID_HEADER: fake}
        )
        assert resp.status == 200
    seen = set(usage_ids_seen(stack.upstream, case))
    assert len(seen) == len(forged)
    assert not seen & forged
    records = _records(stack, seen)
    for uid in seen:
        assert records[uid].state == UsageRecord.CONFIRMED, records[uid]
        assert records[uid].customer == "bob"
        assert records[uid].response_bytes > 0
    logged = wait_until(
        lambda: relay.logged(case), lambda e: len(e) == len(forged), what="every entry at the relay"
    )
    assert {e.request.request_headers[USAGE_ID_HEADER] for e in logged} == seen
    assert all(
        METADATA_NAMESPACE in e.common_properties.metadata.filter_metadata for e in logged
    )  # Envoy sent metadata too: the relay's stripping is what mattered
    assert not forged & {r.usage_id for r in sqlite_meter_records(meter_file(stack))}


def test_denied_request_header_never_touches_a_pending_record(
    relayed: tuple[LocalStack, _Relay],
) -> None:
    """A denied request logs the client's own header; naming a pending record, it voids nothing.

    The victim's own entry is dropped by the relay, so its reservation is pending when the
    attacker's denied entry (401, the victim's usage id in the header) arrives: the record ends
    UNCONFIRMED (billed per policy) after the grace, never VOIDED.
    """
    stack, relay = relayed
    case, attack = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    victim = stack.request(f"/v1/search?case=lost-{case}", token=stack.token("alice"))
    assert victim.status == 200
    uid = str(victim.json()["headers"][USAGE_ID_HEADER])
    denied = http_request(
        stack.ports.envoy, f"/v1/search?case={attack}", headers={USAGE_ID_HEADER: uid}
    )
    assert denied.status == 401
    logged = wait_until(
        lambda: relay.logged(attack), lambda e: len(e) == 1, what="the denied entry at the relay"
    )
    assert logged[0].request.request_headers[USAGE_ID_HEADER] == uid  # the client's own header
    rec = _records(stack, {uid})[uid]
    assert rec.state == UsageRecord.UNCONFIRMED, rec
    assert rec.customer == "alice"
    assert rec.billable
