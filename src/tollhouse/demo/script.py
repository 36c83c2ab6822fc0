"""The demo's scripted requests, their outcomes, and the table printed from them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tollhouse.demo.localstack import LocalStack

__all__ = ["Outcome", "Step", "format_table", "run_steps", "scripted_steps"]


@dataclass(frozen=True)
class Step:
    """One scripted request and the status the demo expects for it."""

    who: str
    what: str
    path: str
    expect: int
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What happened: the status and a reason (the problem ``code``, or what the API saw)."""

    step: Step
    status: int
    reason: str

    @property
    def as_expected(self) -> bool:
        """Whether the status is the one the script expects."""
        return self.status == self.step.expect


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def scripted_steps(stack: LocalStack) -> list[Step]:
    """Four customers (free alice and dana, pro bob, enterprise globex) and a few attackers."""
    alice, bob = _bearer(stack.token("alice")), _bearer(stack.token("bob"))
    dana = _bearer(stack.token("dana"))
    key = {"x-api-key": stack.api_key}
    expired = _bearer(stack.token("alice", lifetime_s=60, now=1_700_000_000))
    forged = stack.token("bob")
    forged = forged[:-6] + ("AAAAAA" if not forged.endswith("AAAAAA") else "BBBBBB")
    return [
        Step("alice (free)", "free feature", "/v1/search?q=envoy", 200, headers=alice),
        Step("alice (free)", "pro-only feature", "/v1/export/report.csv", 403, headers=alice),
        Step(
            "alice (free)",
            "dot-segments to a pro feature",
            "/v1/search/../export",
            403,
            headers=alice,
        ),
        Step("dana (free, 2/month)", "1st request this month", "/v1/search?q=a", 200, headers=dana),
        Step("dana (free, 2/month)", "2nd request this month", "/v1/search?q=b", 200, headers=dana),
        Step(
            "dana (free, 2/month)",
            "3rd request: over the quota",
            "/v1/search?q=c",
            429,
            headers=dana,
        ),
        Step("bob (pro)", "pro feature", "/v1/export/report.csv", 200, headers=bob),
        Step(
            "bob (pro)",
            "spoofs x-tollhouse-customer: globex",
            "/v1/search",
            200,
            headers={**bob, "x-tollhouse-customer": "globex"},
        ),
        Step("bob (pro)", "enterprise-only feature", "/v1/reports/monthly", 403, headers=bob),
        Step(
            "globex (enterprise)",
            "API key, enterprise feature",
            "/v1/reports/monthly?tokens=1200",
            200,
            headers=key,
        ),
        Step(
            "someone",
            "unknown API key",
            "/v1/search",
            401,
            headers={"x-api-key": "th_demo_not-a-real-key"},
        ),
        Step(
            "bob + globex key",
            "bearer token AND API key",
            "/v1/search",
            400,
            headers={**bob, **key},
        ),
        Step("anonymous", "no credentials", "/v1/search", 401),
        Step("mallory", "tampered signature", "/v1/search", 401, headers=_bearer(forged)),
        Step("alice (free)", "expired token", "/v1/search", 401, headers=expired),
    ]


def _reason(status: int, body: bytes) -> str:
    try:
        doc = json.loads(body.decode("utf-8"))
    except ValueError:
        return body.decode("utf-8", "replace")[:40] or "-"
    if not isinstance(doc, dict):
        return "-"
    if status == 200 and isinstance(doc.get("headers"), dict):
        seen = doc["headers"]
        return (
            f"API saw customer={seen.get('x-tollhouse-customer', '?')} "
            f"plan={seen.get('x-tollhouse-plan', '?')} "
            f"feature={seen.get('x-tollhouse-feature', '?')}"
        )
    return str(doc.get("code", "-"))


def run_steps(stack: LocalStack, steps: list[Step]) -> list[Outcome]:
    """Send each step through Envoy, in order."""
    outcomes = []
    for step in steps:
        resp = stack.request(step.path, method=step.method, headers=step.headers)
        outcomes.append(Outcome(step, resp.status, _reason(resp.status, resp.body)))
    return outcomes


def format_table(outcomes: list[Outcome]) -> str:
    """Render a plain-text table: customer, scenario, request, status, reason (and surprises)."""
    rows = [("customer", "scenario", "request", "status", "reason")]
    for o in outcomes:
        mark = "" if o.as_expected else f"   <-- expected {o.step.expect}"
        rows.append(
            (
                o.step.who,
                o.step.what,
                f"{o.step.method} {o.step.path}",
                str(o.status),
                o.reason + mark,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(row[:4], widths, strict=True)]
        lines.append("  ".join([*cells, row[4]]))
        if n == 0:
            lines.append("  ".join(["-" * w for w in widths] + ["-" * 6]))
    return "\n".join(lines)
