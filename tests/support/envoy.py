"""Envoy test support: ``envoy --mode validate`` with the venv's Envoy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ENVOY", "envoy_validate"]

ENVOY = Path(sys.executable).parent / "envoy"


def envoy_validate(config: dict[str, Any] | str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """Run ``envoy --mode validate`` on a config (dict or YAML text) written to ``tmp``."""
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    path = tmp / "envoy.yaml"
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [
            str(ENVOY),
            "--mode",
            "validate",
            "-c",
            str(path),
            "--use-dynamic-base-id",
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,
    )
