"""`pip install .` ships what `tollhouse demo` needs: the Envoy configs and the demo config."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.support.packaging import ROOT, build_wheel

pytestmark = pytest.mark.deploy  # the k8s manifests, the Dockerfile or the packaging

PACKAGE_DATA = {
    "tollhouse/demo/envoy/sidecar.yaml": ROOT / "envoy" / "sidecar.yaml",
    "tollhouse/demo/envoy/sidecar-http.yaml": ROOT / "envoy" / "sidecar-http.yaml",
    "tollhouse/demo/tollhouse.yaml": ROOT / "src" / "tollhouse" / "demo" / "tollhouse.yaml",
    "tollhouse/admin/openapi.yaml": ROOT / "src" / "tollhouse" / "admin" / "openapi.yaml",
}


def test_the_wheel_holds_the_envoy_configs_the_demo_renders(tmp_path: Path) -> None:
    """The built wheel contains the demo's Envoy and tollhouse configs, byte for byte."""
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for inside, source in PACKAGE_DATA.items():
            assert inside in names, inside
            assert z.read(inside) == source.read_bytes(), inside


def test_the_packaged_envoy_configs_are_links_to_the_documented_ones() -> None:
    """src/tollhouse/demo/envoy/ holds relative links to envoy/: one copy to edit, never two."""
    folder = ROOT / "src" / "tollhouse" / "demo" / "envoy"
    for name in ("sidecar.yaml", "sidecar-http.yaml"):
        link = folder / name
        assert link.is_symlink(), link
        assert not Path(str(link.readlink())).is_absolute()
        assert link.resolve() == (ROOT / "envoy" / name).resolve()
