"""The one RFC 9457 problem+json builder of every HTTP listener (admin, usage, spend cap).

A leaf module (aiohttp only, imported when a response is built), so domain packages that serve
HTTP (billing's invoice routes) need not import the listeners that mount them. The document
itself (:func:`problem_document`) is shared with the Check's denies: ``Deny.problem()`` builds
it here too, and the Envoy edge sends it with :data:`PROBLEM_JSON`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["PROBLEM_JSON", "PROBLEM_TYPE_BASE", "problem_document", "problem_response"]

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://tollhouse.dev/problems/"


def problem_document(status: int, code: str, title: str, detail: str = "") -> dict[str, str | int]:
    """The RFC 9457 document: ``type`` (from ``code``), ``title``, ``status``, ``code``, detail."""
    body: dict[str, str | int] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    return body


def problem_response(
    status: int, code: str, title: str, detail: str = "", headers: Mapping[str, str] | None = None
) -> web.Response:
    """An RFC 9457 problem+json response with a stable ``code``."""
    from aiohttp import web

    body = problem_document(status, code, title, detail)
    return web.json_response(body, status=status, content_type=PROBLEM_JSON, headers=headers)
