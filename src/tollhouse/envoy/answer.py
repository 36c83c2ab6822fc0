"""What a Decision means on the wire, for both transports: one mapping, two encodings.

The gRPC codec (``envoy/codec.py``) and the HTTP codec (``envoy/http_codec.py``) each own their
wire format, but every choice of *what* to answer is made here, once: the HTTP status of a deny,
its problem+json body and headers, which identity headers go upstream and which are removed, and
the key/value pairs the access log needs. So no status code is decided in two places.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tollhouse.decision import Allow, Decision, Deny
from tollhouse.metrics import CHECK_LATENCY, CHECKS
from tollhouse.problems import PROBLEM_JSON

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "DenyAnswer",
    "deny_answer",
    "observe",
    "upstream_split",
]

PROBLEM_CONTENT_TYPE = PROBLEM_JSON  # the one media type, from tollhouse.problems

# The statuses Envoy forwards to the client on a deny; anything else is a bug and answers 503.
_DENY_STATUSES = frozenset(
    {
        400,
        401,
        402,
        403,
        404,
        405,
        406,
        407,
        408,
        409,
        410,
        411,
        412,
        413,
        414,
        415,
        416,
        417,
        421,
        422,
        423,
        424,
        426,
        428,
        429,
        431,
        500,
        501,
        502,
        503,
        504,
        505,
        506,
        507,
        508,
        510,
        511,
    }
)


@dataclass(frozen=True, slots=True)
class DenyAnswer:
    """A deny as the client sees it: status, headers (content-type first) and the body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def deny_status(d: Deny) -> int:
    """The HTTP status of a deny; never below 400 (a deny is never an allow)."""
    return d.status if d.status in _DENY_STATUSES else 503


def deny_answer(d: Deny) -> DenyAnswer:
    """The client-facing answer of a deny (problem+json body, WWW-Authenticate, Retry-After...)."""
    body = json.dumps(d.problem(), separators=(",", ":")).encode()
    headers = (("content-type", PROBLEM_CONTENT_TYPE), *d.headers)
    return DenyAnswer(deny_status(d), headers, body)


def upstream_split(d: Allow) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Identity headers to set upstream (overwriting) and those to remove (no value)."""
    return (
        tuple((n, v) for n, v in d.upstream_headers if v),
        tuple(n for n, v in d.upstream_headers if not v),
    )


_ALLOWED = CHECKS.labels("allowed", "ok")
_observe_latency = CHECK_LATENCY.observe


@lru_cache(maxsize=256)
def _denied(status: int, code: str) -> Any:
    """The counter child of one deny reason (bound once, not looked up per Check)."""
    return CHECKS.labels("denied" if status < 500 else "error", code)


def observe(decision: Decision, started: float) -> None:
    """Count one answered Check and its latency (``started`` from ``time.perf_counter``)."""
    if isinstance(decision, Allow):
        _ALLOWED.inc()
    else:
        _denied(deny_status(decision), decision.code).inc()
    _observe_latency(time.perf_counter() - started)
