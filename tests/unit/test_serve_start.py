"""`tollhouse serve` refuses to start, and opens nothing, when it cannot serve what it is told to.

Each test runs the real console script as a subprocess against a config in a temporary folder and
then looks at that folder: no spool, no meter, nothing written.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.servers import free_port
from tollhouse import devkeys
from tollhouse.listeners import LISTENERS  # every address serve binds, metrics_listen too

pytestmark = pytest.mark.component  # runs `tollhouse serve` as a process


def _config(tmp_path: Path, *, jwks: bool = True) -> Path:
    if jwks:
        (tmp_path / "jwks.json").write_text(json.dumps(devkeys.jwks(devkeys.generate_ec("k1"))))
    doc = {
        **{name: f"127.0.0.1:{free_port()}" for name in LISTENERS},
        "auth": {
            "jwt": [
                {"issuer": "https://issuer.example", "audiences": ["api"], "jwks_file": "jwks.json"}
            ]
        },
        "metering": {"spool": "spool", "meter": "sqlite:///./meter.db"},
        "shutdown_grace_s": 1,
    }
    path = tmp_path / "tollhouse.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "tollhouse"
    return subprocess.run(
        [str(exe), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("setting", LISTENERS)
def test_port_in_use_is_one_line_and_exit_2_with_nothing_opened(
    tmp_path: Path, setting: str
) -> None:
    """Any occupied listener: exit 2 and one stderr line naming the address and the setting.

    No traceback, and the folder holds exactly what it held before (no spool, no meter db).
    """
    config = _config(tmp_path)
    address = yaml.safe_load(config.read_text())[setting]
    host, _, port = address.rpartition(":")
    before = sorted(p.name for p in tmp_path.iterdir())
    with socket.socket() as occupant:
        occupant.bind((host, int(port)))
        occupant.listen(1)
        proc = _serve(config)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert address in lines[0]
    assert setting in lines[0]
    assert "in use" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "spool").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_jwks_file_stops_serve_with_its_dotted_path(tmp_path: Path) -> None:
    """A jwks_file that names nothing: exit 2 with the dotted path and the resolved file.

    Nothing is opened (no spool), instead of an unready process logging FileNotFoundError.
    """
    config = _config(tmp_path, jwks=False)
    proc = _serve(config)
    assert proc.returncode == 2, proc.stderr
    assert f"auth.jwt.0.jwks_file: file not found: {tmp_path / 'jwks.json'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "spool").exists()
    assert not (tmp_path / "meter.db").exists()


@pytest.mark.parametrize("content", ["", "  \n"])
def test_empty_admin_token_file_stops_serve_with_its_dotted_path(
    tmp_path: Path, content: str
) -> None:
    """An admin token file with no token in it: exit 2 naming admin.token_file, no traceback.

    Before, serve opened the spool and the store and then died with a ValueError traceback when
    the admin listener started.
    """
    config = _config(tmp_path)
    doc = yaml.safe_load(config.read_text())
    (tmp_path / "admin-token").write_text(content)
    doc["store"] = {"url": "sqlite:///./store.db"}
    doc["admin"] = {"token_file": "admin-token"}
    config.write_text(yaml.safe_dump(doc))
    proc = _serve(config)
    assert proc.returncode == 2, proc.stderr
    assert f"admin.token_file: the file is empty: {tmp_path / 'admin-token'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "spool").exists()
