"""Entitlements: the catalog snapshot (plans -> features) and route -> feature matching."""

from tollhouse.entitlements.catalog import Catalog, build_catalog
from tollhouse.entitlements.matcher import FeatureMatcher, compile_pattern

__all__ = ["Catalog", "FeatureMatcher", "build_catalog", "compile_pattern"]
