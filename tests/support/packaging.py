"""Packaging test support: the wheel, built from a copy of the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "build_wheel"]

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(tmp: Path) -> Path:
    """Build the wheel from a copy of the sources (links kept as links), as `pip install .` does.

    A copy, so the build leaves nothing in the checkout and proves the links are relative.
    """
    src = tmp / "checkout"
    for name in ("pyproject.toml", "README.md"):
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "envoy", src / "envoy", symlinks=True)
    shutil.copytree(
        ROOT / "src",
        src / "src",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    out = tmp / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = out.glob("tollhouse-*.whl")
    return wheel
