"""Metering test support: a config with every kind of meter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tollhouse.config import Config, parse_config

__all__ = ["metering_config"]


def metering_config(tmp: Path | None = None, **metering: Any) -> Config:
    """Meters of every source and two features; with ``tmp``, a spool and SQLite meter there."""
    doc: dict[str, Any] = {
        "meters": {
            "requests": {},
            "egress": {"from": "response_bytes"},
            "ingress": {"from": "request_bytes"},
            "tokens": {"from_response_header": "x-usage-tokens", "bill_upstream_5xx": True},
        },
        "features": {
            "search": [{"methods": ["GET"], "path": "/v1/search*"}],
            "llm": {
                "rules": [{"path": "/v1/llm"}],
                "meters": ["requests", "egress", "ingress", "tokens"],
            },
        },
        "metering": metering,
    }
    if tmp is not None:
        doc["metering"] = {
            "spool": str(tmp / "spool"),
            "meter": f"sqlite:///{tmp / 'meter.db'}",
            **metering,
        }
    return parse_config(doc)
