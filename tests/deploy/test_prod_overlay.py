"""The deployment guide's numbers, asserted on the rendered prod overlay.

deploy/overlays/prod is what production runs; the guide
(shared/seed/rateguard-kubernetes-guide.md) fixes its replicas, resources, HPA, PDB,
probes, Prometheus annotations, anti-affinity, NetworkPolicies, Ingress and TLS.
"""

from __future__ import annotations

import pytest

APPS = ("proxy", "web", "analytics", "alerts")

# The guide's "Resource Limits" table.
RESOURCES = {
    "proxy": {"requests": {"cpu": "250m", "memory": "256Mi"},
              "limits": {"cpu": "1000m", "memory": "512Mi"}},
    "web": {"requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"}},
    "analytics": {"requests": {"cpu": "100m", "memory": "128Mi"},
                  "limits": {"cpu": "500m", "memory": "256Mi"}},
    "alerts": {"requests": {"cpu": "50m", "memory": "64Mi"},
               "limits": {"cpu": "200m", "memory": "128Mi"}},
}

# (port, path) of the liveness and readiness probes.
PROBES = {
    "proxy": (3001, "/healthz", "/readyz"),
    "web": (3000, "/healthz", "/readyz"),
    "analytics": (8080, "/healthz", "/readyz"),
    "alerts": (8080, "/healthz", "/readyz"),
}

# Which app pods may reach each database, and on which port.
DATABASE_CLIENTS = {
    "postgres": (5432, {"web", "proxy", "alerts", "migrations"}),
    "redis": (6379, {"proxy", "web"}),
    # `rateguard db migrate` creates the ClickHouse tables and the events topic.
    "clickhouse": (8123, {"analytics", "web", "alerts", "migrations"}),
    "redpanda": (9092, {"proxy", "analytics", "migrations"}),
}

SECRET_KEYS = {"DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS", "CLICKHOUSE_URL",
               "JWT_SECRET", "ENCRYPTION_KEY"}


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def port_number(c: dict, port) -> int:
    """Resolve a named container port."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p["name"] == port)


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


# ------------------------------------------------------------------- workloads

def test_namespace(prod):
    ns = prod.get("Namespace", "rateguard")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    namespaced = [d for d in prod.docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"rateguard"}


@pytest.mark.parametrize("name, replicas", [("web", 2), ("analytics", 2), ("alerts", 1)])
def test_replicas(prod, name, replicas):
    assert prod.get("Deployment", name)["spec"]["replicas"] == replicas


def test_proxy_replicas_belong_to_the_hpa(prod):
    # A fixed spec.replicas would reset the autoscaled proxy on every apply.
    assert "replicas" not in prod.get("Deployment", "proxy")["spec"]


def test_hpa(prod):
    hpa = prod.get("HorizontalPodAutoscaler", "proxy-hpa")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "proxy"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 20)
    [metric] = spec["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    up, down = spec["behavior"]["scaleUp"], spec["behavior"]["scaleDown"]
    assert up["policies"] and all(p["periodSeconds"] == 15 for p in up["policies"])
    assert down["stabilizationWindowSeconds"] == 300


def test_pdb(prod):
    pdb = prod.get("PodDisruptionBudget", "proxy-pdb")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"] == {"matchLabels": {"app": "proxy"}}


@pytest.mark.parametrize("name", APPS)
def test_resources(prod, name):
    assert container(prod.get("Deployment", name))["resources"] == RESOURCES[name]


@pytest.mark.parametrize("name", APPS)
def test_labels_and_selector(prod, name):
    deployment = prod.get("Deployment", name)
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": name}}
    assert deployment["spec"]["template"]["metadata"]["labels"]["app"] == name


@pytest.mark.parametrize("name", APPS)
def test_one_image_one_subcommand(prod, name):
    c = container(prod.get("Deployment", name))
    assert c["image"] == "registry.example.com/rateguard/rateguard:0.1.0"
    assert c.get("command") is None, "the image's ENTRYPOINT is rateguard"
    assert c["args"] == [name]


@pytest.mark.parametrize("name", APPS)
def test_probes(prod, name):
    c = container(prod.get("Deployment", name))
    port, live, ready = PROBES[name]
    assert c["livenessProbe"]["httpGet"]["path"] == live
    assert c["readinessProbe"]["httpGet"]["path"] == ready
    assert port_number(c, c["livenessProbe"]["httpGet"]["port"]) == port
    assert port_number(c, c["readinessProbe"]["httpGet"]["port"]) == port


@pytest.mark.parametrize("name", ["analytics", "alerts"])
def test_workers_health_port(prod, name):
    env = {e["name"]: e.get("value") for e in container(prod.get("Deployment", name))["env"]}
    assert env["HEALTH_PORT"] == "8080"


def test_proxy_ports_and_metrics(prod):
    c = container(prod.get("Deployment", "proxy"))
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 3001, "metrics": 9090}
    annotations = prod.get("Deployment", "proxy")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9090"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_proxy_anti_affinity(prod):
    affinity = pod_spec(prod.get("Deployment", "proxy"))["affinity"]["podAntiAffinity"]
    [term] = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["weight"] == 100
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"] == {"matchLabels": {"app": "proxy"}}


def test_proxy_drains_within_the_grace_period(prod):
    deployment = prod.get("Deployment", "proxy")
    c = container(deployment)
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    drain = int(env.get("PROXY_DRAIN_SECONDS", "20"))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_seconds = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > 20
    assert grace > drain + pre_stop_seconds


@pytest.mark.parametrize("name", APPS + ("migrations",))
def test_restricted_security_context(prod, name):
    obj = prod.get("Job" if name == "migrations" else "Deployment", name)
    pod = pod_spec(obj)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
        assert sc["runAsNonRoot"] is True
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


@pytest.mark.parametrize("name", ["postgres", "redis", "clickhouse", "redpanda"])
def test_databases_run_restricted_too(prod, name):
    # The namespace enforces Pod Security "restricted", so the StatefulSets must comply.
    pod = pod_spec(prod.get("StatefulSet", name))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    [c] = pod["containers"]
    assert c["readinessProbe"] and c["livenessProbe"]
    assert ":" in c["image"] and not c["image"].endswith(":latest")
    [claim] = prod.get("StatefulSet", name)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_migrations_job(prod):
    job = prod.get("Job", "migrations")
    c = container(job)
    assert c["args"] == ["db", "migrate"]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")


# -------------------------------------------------------------------- services

def test_services(prod):
    web = prod.get("Service", "web")["spec"]
    assert web["selector"] == {"app": "web"}
    assert [(p["port"], p["targetPort"]) for p in web["ports"]] == [(3000, "http")]
    proxy = prod.get("Service", "proxy")["spec"]
    assert proxy["selector"] == {"app": "proxy"}
    assert {p["name"]: p["port"] for p in proxy["ports"]} == {"http": 3001, "metrics": 9090}


def test_config_map(prod):
    [config] = prod.all("ConfigMap")
    assert config["metadata"]["name"].startswith("rateguard-config-")  # hashed by kustomize
    assert config["data"] == {"RATEGUARD_ENV": "production", "LOG_LEVEL": "info",
                              "KAFKA_TOPIC": "api-events", "CLICKHOUSE_DATABASE": "rateguard"}
    for name in APPS:
        refs = container(prod.get("Deployment", name))["envFrom"]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in refs
        assert {"secretRef": {"name": "rateguard-secrets"}} in refs


# --------------------------------------------------------------------- secrets

def test_secrets_come_from_external_secrets(prod):
    assert "Secret" not in {d["kind"] for d in prod.docs}, "prod must not ship the template"
    es = prod.get("ExternalSecret", "rateguard-secrets")
    assert es["apiVersion"] == "external-secrets.io/v1"
    assert es["spec"]["target"]["name"] == "rateguard-secrets"
    assert {d["secretKey"] for d in es["spec"]["data"]} == SECRET_KEYS
    assert es["spec"]["secretStoreRef"]["kind"] == "ClusterSecretStore"
    db = prod.get("ExternalSecret", "rateguard-db-credentials")
    assert {d["secretKey"] for d in db["spec"]["data"]} == {
        "POSTGRES_PASSWORD", "REDIS_PASSWORD", "CLICKHOUSE_PASSWORD"}


# ---------------------------------------------------------------- networking

def _peers(policy: dict) -> tuple[set[str], set[int]]:
    apps, ports = set(), set()
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, "only pods of this namespace"
            apps.add(peer["podSelector"]["matchLabels"]["app"])
        ports |= {p["port"] for p in rule["ports"]}
    return apps, ports


@pytest.mark.parametrize("database", sorted(DATABASE_CLIENTS))
def test_database_network_policies(prod, database):
    port, clients = DATABASE_CLIENTS[database]
    policies = [p for p in prod.all("NetworkPolicy")
                if p["spec"]["podSelector"].get("matchLabels") == {"app": database}]
    assert len(policies) == 1, f"one policy selects {database}"
    [policy] = policies
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert _peers(policy) == (clients, {port})


def test_default_deny_ingress(prod):
    deny = prod.get("NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_ingress(prod):
    ingress = prod.get("Ingress", "rateguard")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    routes = {(r["host"], p["backend"]["service"]["name"], p["backend"]["service"]["port"]["number"])
              for r in spec["rules"] for p in r["http"]["paths"]}
    assert routes == {("rateguard.example.com", "web", 3000),
                      ("api.rateguard.example.com", "proxy", 3001)}
    [tls] = spec["tls"]
    assert tls["secretName"] == "rateguard-tls"
    assert set(tls["hosts"]) == {"rateguard.example.com", "api.rateguard.example.com"}


def test_tls_certificate(prod):
    cert = prod.get("Certificate", "rateguard-tls")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["secretName"] == "rateguard-tls"
    assert set(cert["spec"]["dnsNames"]) == {"rateguard.example.com", "api.rateguard.example.com"}
    assert cert["spec"]["issuerRef"]["kind"] in ("Issuer", "ClusterIssuer")
