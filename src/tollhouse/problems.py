"""The one RFC 9457 problem+json builder of every HTTP listener (admin, usage, spend cap).

A leaf module (aiohttp only), so domain packages that serve HTTP (billing's invoice routes)
need not import the listeners that mount them. Denies of the Check are rendered by the Envoy
edge from ``Deny.problem()`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

__all__ = ["PROBLEM_JSON", "problem_response"]

PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int, code: str, title: str, detail: str = "", headers: Mapping[str, str] | None = None
) -> web.Response:
    """An RFC 9457 problem+json response with a stable ``code``."""
    body = {
        "type": f"https://tollhouse.dev/problems/{code}",
        "title": title,
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    return web.json_response(body, status=status, content_type=PROBLEM_JSON, headers=headers)
