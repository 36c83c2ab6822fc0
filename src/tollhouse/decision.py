"""Plain values that flow through the Check path. No protobuf here: ``envoy/codec.py`` converts.

A Check produces exactly one :data:`Decision`: :class:`Allow` or :class:`Deny`. "Cannot decide" is a
``Deny`` with status 503 and a stable code, never an exception and never an allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tollhouse.problems import problem_document

__all__ = ["USAGE_ID_KEY", "Allow", "Decision", "Deny", "RequestInfo", "unavailable"]

Headers = tuple[tuple[str, str], ...]
# The key of the usage id in an Allow's ``metadata`` (what the access log joins on).
USAGE_ID_KEY = "usage_id"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What tollhouse needs from Envoy's CheckRequest. Header names are lower-case."""

    method: str
    path: str  # normalised by Envoy, query string removed
    headers: Mapping[str, str]
    request_id: str = ""
    host: str = ""
    query: str = ""


@dataclass(frozen=True, slots=True)
class Allow:
    """Let the request through. ``upstream_headers`` overwrite what the client sent."""

    customer: str
    plan: str
    feature: str
    decision_id: str
    usage_id: str = ""
    upstream_headers: Headers = ()
    response_headers: Headers = ()  # to the client (RateLimit headers)
    metadata: Mapping[str, str | int | bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse the request: ``status`` with an RFC 9457 problem+json body carrying ``code``."""

    status: int
    code: str
    title: str
    detail: str = ""
    headers: Headers = ()
    customer: str = ""
    extra: Mapping[str, str | int] = field(default_factory=dict)

    def problem(self) -> dict[str, str | int]:
        """The problem+json document for the client."""
        body = problem_document(self.status, self.code, self.title, self.detail)
        body.update(self.extra)
        return body


Decision = Allow | Deny


def unavailable(code: str, detail: str) -> Deny:
    """Tollhouse cannot decide: 503, never 200."""
    return Deny(503, code, "Service unavailable", detail, headers=(("retry-after", "1"),))
