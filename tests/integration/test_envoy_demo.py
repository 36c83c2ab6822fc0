"""`tollhouse demo` end to end: the scripted tour, its table, `--keep` and a clean stop."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import http_request
from tollhouse.demo.stack import find_binary
from tollhouse.demo.walkthrough import ADMIN_HEADER

pytestmark = pytest.mark.e2e  # starts a real Envoy


def test_demo_tour_prints_table_and_exits_0(tmp_path: Path) -> None:
    """The demo prints every scripted outcome, stops its processes and exits 0.

    Its invoices land in the demo config's own ``billing.invoices_dir`` (and nowhere else).
    """
    result = subprocess.run(
        [str(find_binary("tollhouse")), "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "expected" not in out  # no row was marked as a surprise
    for code in (
        "not_entitled",
        "invalid_api_key",
        "ambiguous_credentials",
        "missing_credentials",
        "invalid_token",
    ):
        assert code in out
    spoof = next(line for line in out.splitlines() if "spoofs x-tollhouse-customer" in line)
    assert "API saw customer=bob plan=pro" in spoof
    assert (tmp_path / "envoy" / "envoy.yaml").is_file()
    assert (tmp_path / "tollhouse" / "tollhouse.yaml").is_file()
    # One invoices folder: the config's billing.invoices_dir, where `tollhouse bill` writes too.
    config = yaml.safe_load((tmp_path / "tollhouse" / "tollhouse.yaml").read_text())
    invoices = Path(config["billing"]["invoices_dir"])
    assert sorted(p.name for p in invoices.glob("*.html"))
    assert str(invoices) in out
    assert not (tmp_path / "invoices").exists()


def _grab(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in demo output:\n{text}"
    return found[1]


def _printed_block(text: str, header: str) -> list[str]:
    """The indented lines printed right after ``header``, up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(header) + 1
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        assert line.startswith("  "), line
        block.append(line[2:])
    return block


def _run_bash(script: str) -> str:
    done = subprocess.run(
        ["bash", "-c", "set -eu\n" + script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _check_keep_output(text: str, workdir: Path) -> None:
    port = int(_grab(r"Envoy listens on http://127\.0\.0\.1:(\d+)", text))
    exports = [line.strip() for line in text.splitlines() if line.startswith("  export ")]
    names = [line.split("=", 1)[0].removeprefix("export ") for line in exports]
    assert names == ["ALICE", "DANA", "BOB", "GLOBEX_KEY", "ADMIN_TOKEN"]
    creds = {name: _grab(rf"export {name}='([^']+)'", text) for name in names}
    for header, path, who in (
        ("authorization", "/v1/search", "ALICE"),
        ("authorization", "/v1/usage", "DANA"),
        ("authorization", "/v1/export/report.csv", "BOB"),
        ("x-api-key", "/v1/reports/monthly", "GLOBEX_KEY"),
    ):
        value = creds[who] if header == "x-api-key" else f"Bearer {creds[who]}"
        assert http_request(port, path, headers={header: value}).status == 200, who
    token_file = workdir / "tollhouse" / "admin-token"
    assert token_file.read_text(encoding="utf-8").strip() == creds["ADMIN_TOKEN"]
    # The admin walkthrough, exactly as printed, through bash, curl and python3.
    walk = _printed_block(text, ADMIN_HEADER)
    out = _run_bash("\n".join(exports + walk))
    statuses = re.findall(r"^HTTP/1\.1 (\d{3})", out, flags=re.MULTILINE)
    assert statuses == ["200", "401"], out
    assert '"x-tollhouse-customer": "acme"' in out
    assert '"code":"invalid_api_key"' in out
    # The kept signing key mints more tokens that this stack accepts.
    key = workdir / "keys" / "signing-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    minted = _run_bash(f"{find_binary('tollhouse')} dev token bob --key {key}").strip()
    resp = http_request(
        port, "/v1/export/report.csv", headers={"authorization": f"Bearer {minted}"}
    )
    assert resp.status == 200
    assert resp.json()["headers"]["x-tollhouse-customer"] == "bob"


def test_demo_keep_serves_until_interrupted(tmp_path: Path) -> None:
    """With --keep every printed credential works, the printed admin-API lines run in bash.

    Create a customer, issue a key, call with it (200), revoke it (401); the demo signing key is
    kept in the workdir and `tollhouse dev token` signs with it; Ctrl-C stops everything with 0.
    """
    proc = subprocess.Popen(
        [str(find_binary("tollhouse")), "demo", "--keep", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:  # up to the last line of the --keep help (or EOF)
            lines.append(line)
            if line.startswith("Logs:"):
                break
        _check_keep_output("".join(lines), tmp_path)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopping" in rest
