"""Route -> feature matching: HTTP methods plus a path pattern, compiled once per config snapshot.

Patterns: ``*`` matches within one path segment (no ``/``), ``**`` matches across segments, and a
trailing ``/**`` also matches the bare prefix (``/v1/export/**`` matches ``/v1/export``). Matching
is on the path Envoy normalised (``normalize_path``, ``merge_slashes``), without the query string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cachetools import LRUCache

from tollhouse.config import FeatureConfig

__all__ = ["FeatureMatcher", "compile_pattern"]


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Translate a path pattern into an anchored regular expression."""
    out: list[str] = []
    i = 0
    if pattern.endswith("/**"):
        head, tail = pattern[:-3], "(?:/.*)?"
    else:
        head, tail = pattern, ""
    while i < len(head):
        if head.startswith("**", i):
            out.append(".*")
            i += 2
        elif head[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(head[i]))
            i += 1
    return re.compile("^" + "".join(out) + tail + "$")


@dataclass(frozen=True, slots=True)
class _Rule:
    feature: str
    methods: frozenset[str]
    regex: re.Pattern[str]

    def matches(self, method: str, path: str) -> bool:
        return ("*" in self.methods or method in self.methods) and bool(self.regex.match(path))


class FeatureMatcher:
    """All features whose rules match a request, in catalog order; results cached per route."""

    def __init__(self, features: Mapping[str, FeatureConfig], cache_size: int = 4096) -> None:
        self._rules = tuple(
            _Rule(name, frozenset(rule.methods), compile_pattern(rule.path))
            for name, feat in features.items()
            for rule in feat.rules
        )
        self._cache: LRUCache[tuple[str, str], tuple[str, ...]] = LRUCache(maxsize=cache_size)

    def features_for(self, method: str, path: str) -> tuple[str, ...]:
        """Names of the features a ``method path`` request belongs to (possibly none)."""
        key = (method, path)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        found: list[str] = []
        for rule in self._rules:
            if rule.feature not in found and rule.matches(method, path):
                found.append(rule.feature)
        result = tuple(found)
        self._cache[key] = result
        return result

    @staticmethod
    def first_entitled(candidates: Iterable[str], entitled: frozenset[str]) -> str | None:
        """The first candidate feature the plan includes."""
        for name in candidates:
            if name in entitled:
                return name
        return None
