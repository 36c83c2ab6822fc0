"""Envoy with the shipped config fails closed: no tollhouse means 503, never the upstream."""

from __future__ import annotations

import pytest

from tests.integration.harness import Envoy, Upstream, http_request, upstream_saw

pytestmark = pytest.mark.e2e  # starts a real Envoy


def test_no_tollhouse_means_503_and_upstream_untouched(
    envoy_without_tollhouse: tuple[Envoy, Upstream],
) -> None:
    """With nothing on the tollhouse port every request is a 503 and none reaches the API."""
    envoy, upstream = envoy_without_tollhouse
    before = envoy.stats().get("http.ingress_http.ext_authz.error", 0)
    statuses = [
        http_request(
            envoy.port, f"/v1/search?case=down-{i}", headers={"authorization": "Bearer x.y.z"}
        ).status
        for i in range(5)
    ]
    assert statuses == [503] * 5
    assert upstream_saw(upstream, "case=down-") == []
    assert envoy.stats()["http.ingress_http.ext_authz.error"] >= before + 5


def test_escaped_slashes_are_redirected_before_any_check(
    envoy_without_tollhouse: tuple[Envoy, Upstream],
) -> None:
    """A %2F path is answered by Envoy itself with a redirect to the unescaped, normalised path."""
    envoy, upstream = envoy_without_tollhouse
    resp = http_request(envoy.port, "/v1/search%2F..%2Fexport?case=escaped")
    assert resp.status in (301, 302, 307, 308)
    assert resp.headers["location"].endswith("/v1/export?case=escaped")
    assert upstream_saw(upstream, "case=escaped") == []
