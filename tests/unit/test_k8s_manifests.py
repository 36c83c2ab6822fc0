"""k8s/: every kustomize build renders, validates offline, and wires what it claims to wire."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.k8s_render import Doc, container, find, pod_spec, render, render_kubectl, render_minimal

pytestmark = pytest.mark.deploy  # the k8s manifests, the Dockerfile or the packaging

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = {
    "base": K8S / "base",
    "distributed": K8S / "overlays" / "distributed",
    "istio": K8S / "overlays" / "istio",
    "istio-http": K8S / "overlays" / "istio-http",
}
ISTIO_GROUPS = ("networking.istio.io/", "security.istio.io/", "telemetry.istio.io/")
K8S_VERSION = kubernetes_validate.latest_version()
# Created by the operator before the first apply, never generated from the repository (a token
# in git would be everyone's token): k8s/README.md says how, test_k8s_newcomer checks it does.
OUT_OF_BAND = {("Secret", "tollhouse-admin")}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: render(path) for name, path in OVERLAYS.items()}


def _is_istio(doc: Doc) -> bool:
    return str(doc["apiVersion"]).startswith(ISTIO_GROUPS)


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "CronJob")]


def _config_yaml(docs: list[Doc]) -> dict[str, Any]:
    loaded = yaml.safe_load(find(docs, "ConfigMap", "tollhouse-config")["data"]["config.yaml"])
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_every_manifest_validates_with_kubernetes_validate(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """Every non-Istio object of each build passes strict schema validation for the newest K8s."""
    docs = [d for d in rendered[overlay] if not _is_istio(d)]
    assert len(docs) >= 8
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field(rendered: dict[str, list[Doc]]) -> None:
    """The validator is not a rubber stamp: a typo in a container field fails."""
    deployment = find(rendered["base"], "Deployment", "demo-api")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    pod_spec(broken)["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_every_config_and_secret_reference_resolves(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """Each ConfigMap, Secret and claim a pod mounts or reads exists in the same build.

    The one exception is the admin token Secret, created out of band (``OUT_OF_BAND``).
    """
    docs = rendered[overlay]
    have = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for w in _workloads(docs):
        spec = pod_spec(w)
        wanted = []
        for v in spec.get("volumes", []):
            if "configMap" in v:
                wanted.append(("ConfigMap", v["configMap"]["name"]))
            if "secret" in v:
                wanted.append(("Secret", v["secret"]["secretName"]))
            if "persistentVolumeClaim" in v:
                wanted.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
            for src in v.get("projected", {}).get("sources", []):
                for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                    if key in src:
                        wanted.append((kind, src[key]["name"]))
        for c in spec["containers"] + spec.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    wanted.append(("Secret", ref["secretKeyRef"]["name"]))
        assert wanted, w["metadata"]["name"]
        missing = [x for x in wanted if x not in have and x not in OUT_OF_BAND]
        assert not missing, f"{overlay}/{w['metadata']['name']}: {missing}"


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_everything_namespaced_is_in_one_namespace(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """Base and overlays put every namespaced object in tollhouse-demo (and create it)."""
    docs = rendered[overlay]
    assert find(docs, "Namespace")["metadata"]["name"] == "tollhouse-demo"
    spaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert spaces == {"tollhouse-demo"}


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_images_are_pinned(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """No floating tags: third-party images by digest (Envoy by exact version), ours by version."""
    for w in _workloads(rendered[overlay]):
        for c in pod_spec(w)["containers"]:
            image = c["image"]
            assert not image.endswith(":latest"), image
            assert ":" in image, image
            if image.startswith("tollhouse:"):
                assert re.fullmatch(r"tollhouse:\d+\.\d+\.\d+", image)
            elif image.startswith("envoyproxy/envoy:"):
                assert re.fullmatch(r"envoyproxy/envoy:v\d+\.\d+\.\d+", image)
            else:
                assert re.search(r":[\w.\-]+@sha256:[0-9a-f]{64}$", image), image


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_containers_are_hardened_and_sized(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """Pod Security restricted (non-root, seccomp, no escalation or caps), read-only, sized."""
    for w in _workloads(rendered[overlay]):
        spec = pod_spec(w)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            user = sc.get("runAsUser", spec["securityContext"].get("runAsUser"))
            assert isinstance(user, int)
            assert user > 0
            assert {"cpu", "memory"} <= set(c["resources"]["requests"])
            assert "memory" in c["resources"]["limits"]


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_tollhouse_probes_use_grpc_health_and_readyz(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """Liveness/startup are gRPC health on 9001, readiness is /readyz on the admin port."""
    docs = rendered[overlay]
    th = container(find(docs, "Deployment", "demo-api"), "tollhouse")
    cfg = _config_yaml(docs)
    grpc_port = int(cfg["listen"].rsplit(":", 1)[1])
    admin_port = int(cfg["admin_listen"].rsplit(":", 1)[1])
    assert cfg["listen"].startswith("0.0.0.0:")  # kubelet probes the pod IP
    assert th["livenessProbe"]["grpc"]["port"] == grpc_port == 9001
    assert th["startupProbe"]["grpc"]["port"] == grpc_port
    ports = {p["name"]: p["containerPort"] for p in th["ports"]}
    ready = th["readinessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    assert ports[ready["port"]] == admin_port


def _sleep_of(c: Doc) -> int:
    cmd = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    found = re.findall(r"sleep (\d+)", cmd)
    assert found, cmd
    return int(found[-1])


def test_termination_grace_covers_envoy_drain_and_tollhouse_shutdown(
    rendered: dict[str, list[Doc]],
) -> None:
    """Grace >= preStop (Envoy drain) + shutdown_grace_s; tollhouse outlives Envoy's drain."""
    docs = rendered["base"]
    dep = find(docs, "Deployment", "demo-api")
    envoy, th = container(dep, "envoy"), container(dep, "tollhouse")
    drain_s = int(envoy["args"][envoy["args"].index("--drain-time-s") + 1])
    envoy_stop = _sleep_of(envoy)
    assert "/healthcheck/fail" in envoy["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "/drain_listeners?graceful" in envoy["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert envoy_stop >= drain_s
    assert _sleep_of(th) >= envoy_stop
    grace = pod_spec(dep)["terminationGracePeriodSeconds"]
    assert grace >= _sleep_of(th) + float(_config_yaml(docs)["shutdown_grace_s"]) + 5


def test_envoy_readiness_uses_the_health_listener(rendered: dict[str, list[Doc]]) -> None:
    """Envoy's readiness probe hits the health_check listener that /healthcheck/fail turns red."""
    docs = rendered["base"]
    envoy = container(find(docs, "Deployment", "demo-api"), "envoy")
    cfg = yaml.safe_load(find(docs, "ConfigMap", "envoy-config")["data"]["envoy.yaml"])
    health = next(li for li in cfg["static_resources"]["listeners"] if li["name"] == "health")
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    probe = envoy["readinessProbe"]["httpGet"]
    assert ports[probe["port"]] == health["address"]["socket_address"]["port_value"]
    hcm = health["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["http_filters"][0]["name"] == "envoy.filters.http.health_check"


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_pdb_and_service_select_the_pods(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """The PDB and the Service select the Deployment's pods; the Service port resolves."""
    docs = rendered[overlay]
    dep = find(docs, "Deployment", "demo-api")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pdb, svc = find(docs, "PodDisruptionBudget", "demo-api"), find(docs, "Service", "demo-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert svc["spec"]["selector"].items() <= labels.items()
    named = {p["name"]: c["name"] for c in pod_spec(dep)["containers"] for p in c.get("ports", [])}
    front = next(p for p in svc["spec"]["ports"] if p["name"] == "http")
    assert named[front["targetPort"]] == ("api" if overlay.startswith("istio") else "envoy")


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_network_policy_keeps_tollhouse_grpc_private(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """Other pods may reach the API front and /metrics, never Check, the access log or /admin.

    Exactly two ports: the API's front door and ``metrics_listen`` (9005); the admin port (9002,
    /admin and /readyz) stays closed to every pod.
    """
    np = find(rendered[overlay], "NetworkPolicy", "demo-api")
    ports = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
    assert not ports & {9001, 9002, 9004}
    metrics_port = int(_config_yaml(rendered[overlay])["metrics_listen"].rsplit(":", 1)[1])
    assert ports == {8080 if overlay in ("base", "distributed") else 5678, metrics_port}


def test_embedded_base_keeps_billable_data_on_a_volume(rendered: dict[str, list[Doc]]) -> None:
    """Base: meter and ledger paths live on the PVC-backed mount; one pod at a time (Recreate)."""
    docs = rendered["base"]
    dep = find(docs, "Deployment", "demo-api")
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    data = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] == "tollhouse-data"
    mount = next(m for m in container(dep, "tollhouse")["volumeMounts"] if m["name"] == "data")
    cfg = _config_yaml(docs)
    for path in (cfg["metering"]["meter"], cfg["billing"]["ledger"], cfg["metering"]["spool"]):
        assert path.removeprefix("sqlite://").startswith(mount["mountPath"] + "/")


def test_distributed_overlay_shape(rendered: dict[str, list[Doc]]) -> None:
    """Several rolling replicas on Redis counters/meter; no embedded volume claim left."""
    docs = rendered["distributed"]
    dep = find(docs, "Deployment", "demo-api")
    assert dep["spec"]["replicas"] >= 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    data = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "data")
    assert set(data) == {"name", "emptyDir"}
    assert not [d for d in docs if d["metadata"]["name"] == "tollhouse-data"]
    cfg = _config_yaml(docs)
    assert cfg["counters"].startswith("redis://redis:6379/")
    assert cfg["metering"]["meter"].startswith("redis://redis:6379/")
    assert cfg["billing"]["ledger"].startswith("postgresql://")
    assert ":" not in cfg["billing"]["ledger"].split("//", 1)[1].split("@")[0]  # no password
    svc = find(docs, "Service", "redis")
    assert svc["spec"]["ports"][0]["port"] == 6379


def test_redis_never_evicts_and_keeps_an_aof(rendered: dict[str, list[Doc]]) -> None:
    """Redis runs the generated redis.conf: noeviction, appendonly yes, on a persistent claim."""
    docs = rendered["distributed"]
    sts = find(docs, "StatefulSet", "redis")
    conf_map = find(docs, "ConfigMap", "redis-config")
    conf = dict(
        line.split(None, 1)
        for line in conf_map["data"]["redis.conf"].splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "always"
    assert container(sts, "redis")["command"] == ["redis-server", "/etc/redis/redis.conf"]
    vol = next(v for v in pod_spec(sts)["volumes"] if v["name"] == "config")
    assert vol["configMap"]["name"] == conf_map["metadata"]["name"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_billing_cronjob_runs_daily_and_bills_whatever_is_due(
    rendered: dict[str, list[Doc]],
) -> None:
    """The CronJob runs every day (UTC) `tollhouse bill` without `--period`.

    Daily, not on the 1st: store customers have anniversary periods (anchored on their creation
    day) that end on any day of the month, and a monthly run billing "last month's label" found
    them still open. Without `--period` the job issues every ended, unissued period of each
    customer and exits 0 when nothing is due (tests/unit/test_billing_due.py).
    """
    cj = find(rendered["distributed"], "CronJob", "tollhouse-billing")
    minute, hour, *rest = cj["spec"]["schedule"].split()
    assert rest == ["*", "*", "*"]
    assert 0 <= int(minute) < 60
    assert 0 <= int(hour) < 24
    assert cj["spec"]["timeZone"] == "Etc/UTC"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    bill = pod_spec(cj)["containers"][0]
    assert bill["command"] == ["tollhouse", "bill", "--config", "/etc/tollhouse/config.yaml"]
    assert "args" not in bill
    assert [e["name"] for e in bill["env"]] == ["PGPASSWORD"]


def test_minimal_renderer_matches_kustomize() -> None:
    """tests/k8s_render.render_minimal gives kustomize's objects (hash suffixes aside)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed: nothing to compare against")

    def canon(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: canon(v) for k, v in x.items()}
        if isinstance(x, list):
            items = [canon(i) for i in x]
            if items and all(isinstance(i, dict) and "name" in i for i in items):
                items.sort(key=lambda i: str(i["name"]))
            return items
        if isinstance(x, str):
            return re.sub(r"^((?:envoy|tollhouse|redis)-[a-z]+)-[a-z0-9]{10}$", r"\1", x)
        return x

    for path in OVERLAYS.values():
        want = {(d["kind"], canon(d["metadata"]["name"])): canon(d) for d in render_kubectl(path)}
        got = {(d["kind"], canon(d["metadata"]["name"])): canon(d) for d in render_minimal(path)}
        assert got == want, path
