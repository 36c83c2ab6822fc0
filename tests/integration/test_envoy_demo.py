"""`tollhouse demo` end to end: the scripted tour, its table, `--keep` and a clean stop."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import http_request
from tollhouse.demo.stack import find_binary

pytestmark = pytest.mark.integration


def test_demo_tour_prints_table_and_exits_0(tmp_path: Path) -> None:
    """The demo prints every scripted outcome, stops its processes and exits 0."""
    result = subprocess.run([str(find_binary("tollhouse")), "demo", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "expected" not in out  # no row was marked as a surprise
    for code in ("not_entitled", "invalid_api_key", "ambiguous_credentials",
                 "missing_credentials", "invalid_token"):
        assert code in out
    spoof = next(line for line in out.splitlines() if "spoofs x-tollhouse-customer" in line)
    assert "API saw customer=bob plan=pro" in spoof
    assert (tmp_path / "envoy" / "envoy.yaml").is_file()
    assert (tmp_path / "tollhouse" / "tollhouse.yaml").is_file()


def _grab(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in demo output:\n{text}"
    return found[1]


def test_demo_keep_serves_until_interrupted(tmp_path: Path) -> None:
    """With --keep the printed curl credentials work, and Ctrl-C stops everything with 0."""
    proc = subprocess.Popen([str(find_binary("tollhouse")), "demo", "--keep", "--workdir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:  # up to the last line of the --keep help (or EOF)
            lines.append(line)
            if line.startswith("Logs:"):
                break
        text = "".join(lines)
        port = int(_grab(r"Envoy listens on http://127\.0\.0\.1:(\d+)", text))
        bob = _grab(r"export BOB='([^']+)'", text)
        resp = http_request(port, "/v1/export/report.csv",
                            headers={"authorization": f"Bearer {bob}"})
        assert resp.status == 200
        assert resp.json()["headers"]["x-tollhouse-customer"] == "bob"
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopping" in rest
