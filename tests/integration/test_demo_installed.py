"""`pip install .` then `tollhouse demo`: the demo runs from the installed package alone."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.packaging import build_wheel

pytestmark = pytest.mark.deploy  # pip-installs the package (packaging), then runs its demo


def test_demo_runs_from_the_built_wheel_outside_a_checkout(tmp_path: Path) -> None:
    """The wheel's tollhouse, imported first and run from another folder, gives the whole tour.

    The wheel is unpacked where the interpreter imports it before the checkout's editable
    install (the dependencies and the Envoy binary still come from the venv), and the demo runs
    with a working directory far from envoy/ (it used to fail: `envoy/sidecar.yaml` not found).
    """
    site = tmp_path / "site"
    with zipfile.ZipFile(build_wheel(tmp_path / "build")) as z:
        z.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import tollhouse; print(tollhouse.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip() == str(site / "tollhouse" / "__init__.py")
    demo = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tollhouse.cli import main; "
            "sys.exit(main(['demo', '--workdir', 'out']))",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "not_entitled" in demo.stdout
    rendered = (elsewhere / "out" / "envoy" / "envoy.yaml").read_text(encoding="utf-8")
    assert "envoy.filters.http.ext_authz" in rendered
