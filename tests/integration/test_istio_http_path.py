"""Istio's envoyExtAuthzHttp shape through a real Envoy: no metadata, the usage id as a header.

Istio's HTTP ext_authz provider generates an ``http_service`` without
``dynamic_metadata_from_headers``, and its ALS provider can log request headers. This Envoy is the
shipped ``envoy/sidecar-http.yaml`` cut to exactly that: the access-log entries carry no
``envoy.filters.http.ext_authz`` metadata, only the logged ``x-tollhouse-usage-id`` request header
that tollhouse set upstream. With ``metering.usage_id_from_request_header: true`` every record is
CONFIRMED with its bytes and header units, and a client's own header changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.integration.harness import (
    LocalStack,
    UsageRecord,
    build_stack,
    meter_file,
    sqlite_meter_records,
    usage_ids_seen,
    wait_until,
)
from tollhouse.demo.stack import EnvoyProcess

pytestmark = pytest.mark.e2e  # starts a real Envoy


def _istio_shape(text: str) -> str:
    """sidecar-http.yaml as Istio's providers would generate it (no metadata from headers)."""
    doc = yaml.safe_load(text)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    config = hcm["typed_config"]
    for f in config["http_filters"]:
        service = f["typed_config"].get("http_service")
        if service is not None:
            del service["authorization_response"]["dynamic_metadata_from_headers"]
    for log in config["access_log"]:
        log["typed_config"]["additional_request_headers_to_log"] = ["x-tollhouse-usage-id"]
    return str(yaml.safe_dump(doc, sort_keys=False))


def _config(config: dict[str, Any]) -> dict[str, Any]:
    metering = {
        **config["metering"],
        "unconfirmed_after_s": 30,
        "flush_interval_ms": 50,
        "usage_id_from_request_header": True,
    }
    return {**config, "metering": metering}


@pytest.fixture(scope="module")
def istack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = build_stack(tmp_path_factory.mktemp("istio-http"), _config, transport="http")
    envoy = stack.envoy
    stack.envoy = EnvoyProcess(envoy.workdir, envoy.ports, _istio_shape(envoy._config_text))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def test_envoy_config_has_no_metadata_from_headers(istack: LocalStack) -> None:
    """The running Envoy really is Istio's shape: the usage id can only come from the header."""
    text = istack.envoy.config_path.read_text()
    assert "dynamic_metadata_from_headers" not in text
    assert "x-tollhouse-usage-id" in text


def test_records_are_confirmed_through_the_logged_header(istack: LocalStack) -> None:
    """Every allowed request: CONFIRMED, with its response bytes and its header units."""
    case = uuid.uuid4().hex[:12]
    token = istack.token("globex")
    for i in range(10):
        resp = istack.request(
            f"/v1/reports/{case}?tokens={100 + i}",
            token=token,
            headers={"x-tollhouse-usage-id": "f" * 32},
        )  # a client's own
        assert resp.status == 200, resp.body[:200]
    ids = set(usage_ids_seen(istack.upstream, case))
    assert len(ids) == 10
    assert "f" * 32 not in ids  # tollhouse overwrote the client's header upstream

    def confirmed() -> dict[str, UsageRecord]:
        return {
            r.usage_id: r for r in sqlite_meter_records(meter_file(istack)) if r.usage_id in ids
        }

    records = wait_until(
        confirmed, lambda got: len(got) == 10, timeout_s=15, what="10 records in the meter"
    )
    assert {r.state for r in records.values()} == {UsageRecord.CONFIRMED}
    assert sorted(int(r.units["tokens"]) for r in records.values()) == list(range(100, 110))
    assert all(r.response_bytes > 0 for r in records.values())
