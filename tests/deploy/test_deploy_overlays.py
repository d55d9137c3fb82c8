"""The other overlays and the managed-databases component render and keep their promises."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from deploy_render import DEPLOY, Rendering, find_kubectl

APPS = ("proxy", "web", "analytics", "alerts")
DATABASES = ("postgres", "redis", "clickhouse", "redpanda")


def replicas(r: Rendering, name: str) -> int:
    return r.get("Deployment", name)["spec"]["replicas"]


def test_every_overlay_is_tested():
    overlays = {p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml")}
    assert overlays == {"dev", "kind", "prod"}


def test_dev_renders_one_small_replica_each(rendered):
    dev = rendered("dev")
    assert {replicas(dev, n) for n in APPS} == {1}
    assert not dev.all("HorizontalPodAutoscaler") and not dev.all("PodDisruptionBudget")
    for name in APPS:
        requests = dev.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0][
            "resources"]["requests"]
        assert requests["cpu"] in ("10m", "25m", "50m")
    [config] = dev.all("ConfigMap")
    assert config["data"]["RATEGUARD_ENV"] == "development"
    assert dev.names("StatefulSet") == set(DATABASES)


def test_kind_renders_for_the_benchmarks(rendered):
    kind = rendered("kind")
    images = {c["image"] for name in APPS
              for c in kind.get("Deployment", name)["spec"]["template"]["spec"]["containers"]}
    assert images == {"rateguard:dev"}
    for name in APPS:
        c = kind.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert c["imagePullPolicy"] == "IfNotPresent", "kind load docker-image, never pulled"
    assert replicas(kind, "proxy") == 2
    node_port = kind.get("Service", "proxy-nodeport")["spec"]
    assert node_port["type"] == "NodePort"
    assert node_port["selector"] == {"app": "proxy"}
    assert [(p["nodePort"], p["targetPort"]) for p in node_port["ports"]] == [(30001, "http")]
    cluster = (DEPLOY / "overlays" / "kind" / "kind-cluster.yaml").read_text()
    assert "containerPort: 30001" in cluster and "hostPort: 30001" in cluster
    # local credentials: JWT_SECRET long enough for RATEGUARD_ENV=production
    secret = kind.get("Secret", "rateguard-secrets")["stringData"]
    assert len(secret["JWT_SECRET"]) >= 32
    [config] = kind.all("ConfigMap")
    assert config["data"]["RATEGUARD_ENV"] == "production"


def test_managed_databases_component(tmp_path: Path):
    """prod + components/managed-databases: no in-cluster database is left behind."""
    variant = tmp_path / "prod-managed"
    variant.mkdir()
    rel = os.path.relpath(DEPLOY, variant)
    (variant / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel}/overlays/prod\n"
        f"components:\n  - {rel}/components/managed-databases\n")
    proc = subprocess.run([find_kubectl(), "kustomize", str(variant)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    managed = Rendering(variant, proc.stdout)
    assert not managed.all("StatefulSet")
    assert not (managed.names("Service") & set(DATABASES))
    assert not {n for n in managed.names("NetworkPolicy") if n.split("-")[0] in DATABASES}
    assert managed.names("ExternalSecret") == {"rateguard-secrets"}
    assert managed.names("Deployment") == set(APPS)


@pytest.mark.parametrize("overlay", ["dev", "kind", "prod"])
def test_every_pod_has_a_network_policy(rendered, overlay):
    r = rendered(overlay)
    policies = [p["spec"]["podSelector"] for p in r.all("NetworkPolicy")]
    assert {"podSelector": {}, "policyTypes": ["Ingress"]} in [
        p["spec"] for p in r.all("NetworkPolicy")]
    for kind in ("Deployment", "StatefulSet", "Job"):
        for obj in r.all(kind):
            app = obj["spec"]["template"]["metadata"]["labels"]["app"]
            assert any(sel.get("matchLabels") == {"app": app}
                       or any(app in e.get("values", []) for e in sel.get("matchExpressions", []))
                       for sel in policies), f"{overlay}: no policy selects app={app}"
