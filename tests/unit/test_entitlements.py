"""Route -> feature matching and the catalog snapshot."""

from __future__ import annotations

import pytest

from tollhouse.config import parse_config
from tollhouse.entitlements import FeatureMatcher, build_catalog, compile_pattern


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/v1/search*", "/v1/search", True),
        ("/v1/search*", "/v1/searchable", True),
        ("/v1/search*", "/v1/search/deep", False),
        ("/v1/export/**", "/v1/export", True),
        ("/v1/export/**", "/v1/export/a/b/c", True),
        ("/v1/export/**", "/v1/exporter", False),
        ("/v1/*/items", "/v1/abc/items", True),
        ("/v1/*/items", "/v1/a/b/items", False),
        ("/v1/**/items", "/v1/a/b/items", True),
        ("/v1/a.b", "/v1/aXb", False),
    ],
)
def test_pattern_semantics(pattern: str, path: str, expected: bool) -> None:
    """`*` stays within a segment, `**` crosses segments, a trailing `/**` matches the prefix."""
    assert bool(compile_pattern(pattern).match(path)) is expected


def _catalog():  # type: ignore[no-untyped-def]
    return build_catalog(
        parse_config(
            {
                "features": {
                    "search": [{"methods": ["GET"], "path": "/v1/search*"}],
                    "export": [{"methods": ["GET", "POST"], "path": "/v1/export/**"}],
                    "any": [{"methods": ["*"], "path": "/v1/any"}],
                },
                "plans": {
                    "free": {"features": ["search"]},
                    "pro": {"features": ["search", "export"]},
                },
                "customers": {"acme": {"plan": "pro", "period_anchor": "2026-01-15"}},
            }
        )
    )


def test_method_must_match() -> None:
    """A rule's methods restrict the feature: POST /v1/search belongs to no feature."""
    m = _catalog().matcher
    assert m.features_for("GET", "/v1/search") == ("search",)
    assert m.features_for("POST", "/v1/search") == ()
    assert m.features_for("DELETE", "/v1/any") == ("any",)


def test_first_entitled_feature() -> None:
    """The plan's features decide which matching feature is granted."""
    cat = _catalog()
    cands = cat.matcher.features_for("POST", "/v1/export/x")
    assert cands == ("export",)
    assert FeatureMatcher.first_entitled(cands, cat.plan_features["free"]) is None
    assert FeatureMatcher.first_entitled(cands, cat.plan_features["pro"]) == "export"


def test_matcher_cache_is_bounded() -> None:
    """Distinct paths never grow the route cache beyond its size."""
    m = FeatureMatcher(_catalog().config.features, cache_size=8)
    for i in range(100):
        m.features_for("GET", f"/v1/search{i}")
    assert len(m._cache) <= 8


def test_catalog_customers_and_version() -> None:
    """Static customers carry their plan and anchor; the version identifies the snapshot."""
    cat = _catalog()
    assert cat.customers["acme"].plan == "pro"
    assert str(cat.customers["acme"].anchor) == "2026-01-15"
    assert len(cat.version) == 12
    assert build_catalog(cat.config).version == cat.version
