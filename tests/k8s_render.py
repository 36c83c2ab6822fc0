"""Render the kustomize layouts in k8s/ for the tests.

``render(dir)`` runs ``kubectl kustomize`` (the machine image ships kubectl with kustomize v5)
and falls back to ``render_minimal``: a small Python renderer for exactly the subset that k8s/
uses, so the tests still run where kubectl is missing. ``test_k8s_manifests`` checks that both
give the same objects whenever kubectl is present.

The subset: ``resources`` (files and directories), ``namespace``, ``labels`` (pairs,
includeSelectors false), ``configMapGenerator`` / ``secretGenerator`` (files, literals,
behavior create/replace, a content-hash name suffix (10 characters like kustomize's, though
not the same characters) and reference rewriting in pod specs),
``patches`` given as ``path`` (strategic merge: containers/volumes/env by name, ``$patch:
delete``, null deletes a key, other lists replaced), ``images`` (newName, newTag, digest).
Anything else in a kustomization.yaml raises ``ValueError``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Doc", "container", "find", "pod_spec", "render", "render_kubectl", "render_minimal"]

Doc = dict[str, Any]
_KNOWN = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
    "secretGenerator",
    "patches",
    "images",
}
_CLUSTER_SCOPED = {"Namespace"}
_MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name"}
_GEN = "__generated__"


def render(path: Path) -> list[Doc]:
    """Render the kustomization in ``path`` (kubectl if present, else the minimal renderer)."""
    return render_kubectl(path) if shutil.which("kubectl") else render_minimal(path)


def render_kubectl(path: Path) -> list[Doc]:
    """``kubectl kustomize path``, parsed."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render_minimal(path: Path) -> list[Doc]:
    """Render in Python: the same objects as kustomize for the subset described above."""
    docs = _build(path)
    renames: dict[tuple[str, str], str] = {}
    for d in docs:
        if d.pop(_GEN, False):
            old = d["metadata"]["name"]
            d["metadata"]["name"] = f"{old}-{_hash(d)}"
            renames[(d["kind"], old)] = d["metadata"]["name"]
    for d in docs:
        for spec in _pod_specs(d):
            _rename_refs(spec, renames)
    return docs


def _build(root: Path) -> list[Doc]:
    kz = yaml.safe_load((root / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kz) - _KNOWN
    if unknown:
        raise ValueError(f"{root}: render_minimal does not support {sorted(unknown)}")
    docs: list[Doc] = []
    for res in kz.get("resources", []):
        p = root / res
        docs += _build(p) if p.is_dir() else _load(p)
    for gen in kz.get("configMapGenerator", []):
        _generate(docs, root, gen, "ConfigMap")
    for gen in kz.get("secretGenerator", []):
        _generate(docs, root, gen, "Secret")
    for patch in kz.get("patches", []):
        for p in _load(root / patch["path"]):
            docs = _patch(docs, p)
    for d in docs:
        _namespace_and_labels(d, kz)
        for spec in _pod_specs(d):
            _set_images(spec, kz.get("images", []))
    return docs


def _load(p: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]


def _generate(docs: list[Doc], root: Path, gen: Doc, kind: str) -> None:
    data: dict[str, str] = {}
    for f in gen.get("files", []):
        key, _, rel = f.partition("=") if "=" in f else (Path(f).name, "", f)
        data[key] = (root / rel).read_text(encoding="utf-8")
    for lit in gen.get("literals", []):
        k, _, v = lit.partition("=")
        data[k] = v
    if kind == "Secret":
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    name = gen["name"]
    if gen.get("behavior", "create") == "replace":
        old = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
        old["data"] = data
        return
    doc: Doc = {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name},
        "data": data,
        _GEN: True,
    }
    if kind == "Secret":
        doc["type"] = "Opaque"
    docs.append(doc)


def _patch(docs: list[Doc], patch: Doc) -> list[Doc]:
    key = (patch["kind"], patch["metadata"]["name"])
    out = []
    for d in docs:
        if (d["kind"], d["metadata"]["name"]) != key:
            out.append(d)
        elif patch.get("$patch") != "delete":
            body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
            out.append(_merge(d, body))
    return out


def _merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _merge(base.get(k), v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in _MERGE_KEYS:
        mk = _MERGE_KEYS[field]
        out_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            idx = next((i for i, x in enumerate(out_list) if x.get(mk) == item.get(mk)), None)
            if item.get("$patch") == "delete":
                out_list = [x for x in out_list if x.get(mk) != item.get(mk)]
            elif idx is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[idx] = _merge(out_list[idx], item)
        return out_list
    return copy.deepcopy(patch)


def _namespace_and_labels(d: Doc, kz: Doc) -> None:
    meta = d.setdefault("metadata", {})
    if "namespace" in kz and d["kind"] not in _CLUSTER_SCOPED:
        meta["namespace"] = kz["namespace"]
    for group in kz.get("labels", []):
        if group.get("includeSelectors") or group.get("includeTemplates"):
            raise ValueError("render_minimal supports labels with includeSelectors: false only")
        meta.setdefault("labels", {}).update(group["pairs"])


def _pod_specs(d: Doc) -> list[Doc]:
    spec = d.get("spec", {})
    if d["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if "template" in spec and "spec" in spec["template"]:
        return [spec["template"]["spec"]]
    return []


def _set_images(spec: Doc, images: list[Doc]) -> None:
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        name = c["image"].split("@")[0].rsplit(":", 1)[0]
        for img in images:
            if img["name"] == name:
                new = img.get("newName", name)
                c["image"] = (
                    f"{new}@{img['digest']}"
                    if "digest" in img
                    else f"{new}:{img.get('newTag', 'latest')}"
                )


def _rename_refs(spec: Doc, renames: dict[tuple[str, str], str]) -> None:
    def fix(obj: Doc | None, kind: str, key: str = "name") -> None:
        if obj and (kind, obj.get(key)) in renames:
            obj[key] = renames[(kind, obj[key])]

    for v in spec.get("volumes", []):
        fix(v.get("configMap"), "ConfigMap")
        fix(v.get("secret"), "Secret", "secretName")
        for src in v.get("projected", {}).get("sources", []):
            fix(src.get("configMap"), "ConfigMap")
            fix(src.get("secret"), "Secret")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            fix(ref.get("configMapKeyRef"), "ConfigMap")
            fix(ref.get("secretKeyRef"), "Secret")
        for e in c.get("envFrom", []):
            fix(e.get("configMapRef"), "ConfigMap")
            fix(e.get("secretRef"), "Secret")


def _hash(d: Doc) -> str:
    """Return a name suffix that changes with the content: 10 characters of a sha256."""
    m: Doc = {"kind": d["kind"], "name": d["metadata"]["name"], "data": d.get("data", {})}
    if d["kind"] == "Secret":
        m["type"] = d.get("type", "Opaque")
    text = json.dumps(m, sort_keys=True, separators=(",", ":"))
    hexd = hashlib.sha256(text.encode()).hexdigest()[:10]
    return hexd.translate(str.maketrans("013ae", "ghkmt"))


# --- helpers for the tests that read rendered objects ----------------------------------------


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    """Return the one object of ``kind`` (and ``name``; a generated name has a hash suffix)."""
    hits = [
        d
        for d in docs
        if d["kind"] == kind
        and (
            name is None
            or d["metadata"]["name"] == name
            or (kind in ("ConfigMap", "Secret") and d["metadata"]["name"].rsplit("-", 1)[0] == name)
        )
    ]
    if len(hits) != 1:
        raise LookupError(f"{len(hits)} objects of kind {kind} named {name}")
    return hits[0]


def pod_spec(doc: Doc) -> Doc:
    """Return the pod spec of a Deployment, StatefulSet or CronJob."""
    specs = _pod_specs(doc)
    if not specs:
        raise LookupError(f"{doc['kind']} has no pod template")
    return specs[0]


def container(doc: Doc, name: str) -> Doc:
    """Return the container ``name`` of a workload."""
    return next(c for c in pod_spec(doc)["containers"] if c["name"] == name)
