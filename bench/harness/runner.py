"""Run scenarios: start the servers, pin them, drive the same load directly at the
upstream and through each server under test, and collect the figures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.harness import load as loadmod
from bench.harness import procs
from bench.harness.scenarios import HUGE_LIMIT, Scenario

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
TOPIC = "rateguard-bench"
PATH = "/bench/items"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Options:
    generator: str = "auto"          # auto | wrk | python
    duration: float = 10.0           # seconds of measured load per target
    warmup: float = 1.0
    repeat: int = 1
    baselines: tuple[str, ...] = ()  # "aiohttp", "nginx"
    compare: tuple[Path, ...] = ()   # other RateGuard checkouts, run as more proxies
    pin: bool = True
    key_header: str = "authorization"  # or x-api-key
    count_statuses: bool = False
    max_requests: int = 0            # keys-10k: keep running phases until this many
    timeout: float = 10.0
    profile_dir: Path | None = None  # --profile: py-spy the proxy into this directory
    log_dir: Path | None = None      # where the servers' logs are kept (--out)


@dataclass
class Server:
    """A server under test: the upstream itself (direct), the proxy or a baseline."""
    name: str
    url: str
    proc: object = None              # subprocess.Popen, None for an external target
    pid: int | None = None
    log_path: Path | None = None
    metrics_url: str | None = None
    extra: dict = field(default_factory=dict)

    def pids(self) -> list[int]:
        pid = self.pid or (self.proc.pid if self.proc is not None else None)
        return procs.tree(pid) if pid else []

    def stop(self) -> None:
        procs.stop(self.proc)


class Infra:
    """Valkey and the Kafka-protocol broker, embedded unless REDIS_URL / KAFKA_BROKERS
    name servers, started once for the whole run; pinned to the helpers' cores."""

    def __init__(self, workdir: Path, layout: procs.Layout) -> None:
        self.workdir = workdir
        self.layout = layout
        self._valkey = None
        self._broker = None
        self.redis_url = os.environ.get("REDIS_URL")
        self.kafka_brokers = os.environ.get("KAFKA_BROKERS")
        self.pids: list[int] = []
        self._topic_ready = False

    def redis(self) -> str:
        if self.redis_url is None:
            from rateguard.embedded.servers import EmbeddedValkey
            log("starting Valkey (embedded)")
            self._valkey = EmbeddedValkey(self.workdir)
            self.redis_url = self._valkey.start()
            process = getattr(getattr(self._valkey, "server", None), "_process", None)
            pid = getattr(process, "pid", None)
            pids = [pid] if pid else [p for p in procs.children(os.getpid())
                                      if "valkey" in _comm(p)]
            self.pids += pids
            procs.pin(pids, self.layout.helpers)
        return self.redis_url

    def kafka(self) -> str:
        if self.kafka_brokers is None:
            from rateguard.embedded.servers import EmbeddedBroker
            log("starting the Kafka-protocol broker (embedded Tansu)")
            self._broker = EmbeddedBroker()
            self.kafka_brokers = self._broker.start()
            self.pids.append(self._broker.proc.pid)
            procs.pin([self._broker.proc.pid], self.layout.helpers)
        if not self._topic_ready:
            from rateguard.events.topics import ensure_topic
            asyncio.run(ensure_topic(tuple(self.kafka_brokers.split(",")), TOPIC))
            self._topic_ready = True
        return self.kafka_brokers

    def close(self) -> None:
        if self._broker is not None:
            self._broker.stop()
        if self._valkey is not None:
            self._valkey.stop()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# -- starting the servers ---------------------------------------------------------------

def start_upstream(workdir: Path, size: int, layout: procs.Layout) -> Server:
    port = procs.free_port()
    log_path = workdir / f"upstream-{size}.log"
    proc = procs.spawn([sys.executable, "-m", "bench.upstream", "--port", str(port),
                        "--size", str(size)], log=log_path, cpus=layout.helpers,
                       env={"PYTHONPATH": _pythonpath()})
    procs.wait_for_port(port, 15, "the bench upstream", proc, log_path)
    return Server("direct", f"http://127.0.0.1:{port}{PATH}", proc, log_path=log_path,
                  extra={"port": port})


def proxy_config(scenario: Scenario, upstream_port: int, keys: list[str]) -> dict:
    from rateguard.snapshot.keys import hash_key
    api = {"id": "bench", "prefix": "/bench", "upstream": f"http://127.0.0.1:{upstream_port}",
           "strip_prefix": True}
    workspace = {"id": "bench", "apis": [api],
                 "keys": [{"id": f"k{i}", "sha256": hash_key(key)} for i, key in enumerate(keys)]}
    if scenario.policy:
        workspace["policies"] = [{"id": "huge", "limits": [HUGE_LIMIT], "scope": "key",
                                  "mode": "enforce", "algorithm": "sliding_window",
                                  # closed: a Redis failure shows up as 503s, not as a
                                  # silently faster in-memory limiter
                                  "failure_mode": "closed"}]
        api["policy"] = "huge"
    return {"workspaces": [workspace]}


def proxy_env(infra: Infra, scenario: Scenario, port: int, metrics_port: int) -> dict:
    """The proxy's settings for a bench run (its servers, ports and topic)."""
    env = {"REDIS_URL": infra.redis(), "PROXY_PORT": str(port),
           "METRICS_PORT": str(metrics_port), "LOG_LEVEL": os.environ.get("LOG_LEVEL", "warning"),
           "KAFKA_TOPIC": TOPIC,
           # every bench server is on 127.0.0.1, which production settings refuse
           "ALLOW_PRIVATE_UPSTREAMS": "true"}
    if scenario.events:
        env["KAFKA_BROKERS"] = infra.kafka()
    return env


def start_proxy(workdir: Path, scenario: Scenario, upstream: Server, keys: list[str],
                infra: Infra, layout: procs.Layout, source: Path | None = None,
                wrapper: tuple[str, ...] = (), ready_timeout: float = 30,
                settings: dict | None = None) -> Server:
    """The proxy of this checkout, or with ``source`` the one of another checkout (same
    config, same servers), named ``proxy@<directory name>``. ``wrapper`` runs it under
    another program (``bench.instructions`` uses valgrind); ``settings`` are more
    environment variables for it."""
    config = proxy_config(scenario, upstream.extra["port"], keys)
    label = "proxy" if source is None else f"proxy@{source.name}"
    name = f"{label}-{scenario.name}"
    config_path = workdir / f"{name}.yaml"
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    config_path.write_text(yaml.dump(config, Dumper=dumper))
    port, metrics_port = procs.free_port(), procs.free_port()
    env = {**proxy_env(infra, scenario, port, metrics_port), **(settings or {})}
    args = [*wrapper, sys.executable, "-m", "rateguard", "proxy", "--config", str(config_path),
            "--host", "127.0.0.1"]
    if not scenario.events:
        args.append("--no-events")
    log_path = workdir / f"{name}.log"
    if source is not None:  # its package first on the path, ahead of the installed one
        env["PYTHONPATH"] = f"{source}:{os.environ['PYTHONPATH']}" \
            if os.environ.get("PYTHONPATH") else str(source)
    log(f"starting {label} ({scenario.features}, {len(keys)} key(s))")
    proc = procs.spawn(args, log=log_path, env=env, cpus=layout.server,
                       cwd=str(source) if source is not None else None)
    server = Server(label, f"http://127.0.0.1:{port}{PATH}", proc, log_path=log_path,
                    metrics_url=f"http://127.0.0.1:{metrics_port}",
                    extra={"source": str(source)} if source is not None else {})
    try:
        procs.wait_for_port(port, max(60, ready_timeout), "the proxy", proc, log_path)
        _wait_ready(f"http://127.0.0.1:{port}/readyz", ready_timeout, server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(url: str, timeout: float, server: Server) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = procs.http_get(url, 1.0)
            if status == 200:
                return
            last = body.decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready ({last}); log:\n{procs.tail(server.log_path)}")


def start_aiohttp(workdir: Path, upstream: Server, keys: list[str], infra: Infra,
                  layout: procs.Layout, limit: bool) -> Server:
    from rateguard.snapshot.keys import hash_key
    hashes = workdir / "aiohttp-keys.txt"
    hashes.write_text("\n".join(hash_key(k) for k in keys) + "\n")
    port = procs.free_port()
    log_path = workdir / "aiohttp.log"
    args = [sys.executable, "-m", "bench.baselines.aiohttp_proxy", "--port", str(port),
            "--upstream", f"http://127.0.0.1:{upstream.extra['port']}",
            "--key-hashes", str(hashes)]
    if limit:
        args += ["--redis-url", infra.redis()]
    else:
        args.append("--no-limit")
    proc = procs.spawn(args, log=log_path, cpus=layout.server, env={"PYTHONPATH": _pythonpath()})
    procs.wait_for_port(port, 30, "the aiohttp baseline", proc, log_path)
    return Server("aiohttp", f"http://127.0.0.1:{port}{PATH}", proc, log_path=log_path,
                  extra={"what": "aiohttp web + ClientSession" + (
                      " + redis-py EVALSHA per request" if limit else "")})


def start_nginx(workdir: Path, upstream: Server, layout: procs.Layout) -> Server | None:
    from bench.baselines import nginx
    if nginx.nginx_path() is None:
        log("nginx is not installed: skipping the nginx baseline (apt-get install nginx-light)")
        return None
    port = procs.free_port()
    where = workdir / f"nginx-{port}"
    conf = nginx.config(where, port, upstream.extra["port"])
    log_path = workdir / "nginx.log"
    proc = procs.spawn(nginx.command(conf, where), log=log_path, cpus=layout.server)
    procs.wait_for_port(port, 15, "nginx", proc, where / "error.log")
    return Server("nginx", f"http://127.0.0.1:{port}{PATH}", proc, log_path=log_path,
                  extra={"what": "nginx, 1 worker, keep-alive upstream pool (no auth/limit)"})


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH")
    return f"{REPO}:{current}" if current else str(REPO)


# -- measuring ------------------------------------------------------------------------------

def proxy_metrics(server: Server) -> dict | None:
    """Events published / dropped / queued, answers by status class and limiter
    decisions, from the proxy's metrics endpoint (counters: take differences)."""
    if not server.metrics_url:
        return None
    try:
        status, body = procs.http_get(server.metrics_url + "/metrics", 2.0)
    except OSError:
        return None
    if status != 200:
        return None
    out: dict = {"status_class": {}, "decision": {}}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-z_]+)(?:{([^}]*)})? ([0-9.e+-]+)$", line)
        if not match:
            continue
        name, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
        if name == "rateguard_events_published_total":
            out["published"] = int(value)
        elif name == "rateguard_events_dropped_total":
            out["dropped"] = int(value)
        elif name == "rateguard_event_queue_depth":
            out["queued"] = int(value)
        elif name == "rateguard_redis_up":
            out["redis_up"] = int(value)
        elif name in ("rateguard_requests_total", "rateguard_limiter_decisions_total"):
            key = "status_class" if name == "rateguard_requests_total" else "decision"
            label = re.search(r'(?:status_class|decision)="([^"]*)"', labels)
            if label:
                out[key][label.group(1)] = out[key].get(label.group(1), 0) + int(value)
    return out


def _delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


class Measurer:
    def __init__(self, options: Options, layout: procs.Layout, helper_pids) -> None:
        self.options = options
        self.layout = layout
        self.helper_pids = helper_pids  # callable -> list of pids

    def load_for(self, server: Server, scenario: Scenario, keys: list[str],
                 duration: float) -> loadmod.Load:
        options = self.options
        key_header = "Authorization" if options.key_header.lower() == "authorization" \
            else options.key_header
        values = [f"Bearer {k}" for k in keys] if key_header == "Authorization" else keys
        return loadmod.Load(server.url, connections=scenario.connections, duration=duration,
                            rate=scenario.rate, keys=values, key_header=key_header,
                            timeout=options.timeout, count_statuses=options.count_statuses)

    def generator(self, scenario: Scenario) -> str:
        return "python" if scenario.rate else self.options.generator

    def measure(self, server: Server, scenario: Scenario, keys: list[str]) -> dict:
        """Warm up, then one measured load; with the server's CPU time and memory."""
        options = self.options
        gen = self.generator(scenario)
        if options.warmup > 0:
            loadmod.run(self.load_for(server, scenario, keys, options.warmup), gen,
                        self.layout.generator)
        phases = scenario.phases if server.name == "proxy" else 1
        per_phase = options.duration / max(1, scenario.phases)
        duration = per_phase if scenario.phases > 1 else options.duration
        pids = server.pids()
        helpers = [p for p in self.helper_pids() if p not in pids]
        events_before = proxy_metrics(server) if server.name.startswith("proxy") else None
        spy = raw = None
        if options.profile_dir is not None and server.name != "direct" and pids:
            from bench.harness import profile
            raw = options.profile_dir / f"{scenario.name}-{server.name}.pyspy.txt"
            if server.name in ("proxy", "aiohttp"):
                spy = profile.start(pids[0], duration * phases, raw, self.layout.helpers)
        cpu0, helpers0, wall0 = procs.cpu_seconds(pids), procs.cpu_seconds(helpers), time.time()
        parts, timeline = [], []
        i = 0
        while True:
            part = loadmod.run(self.load_for(server, scenario, keys, duration), gen,
                               self.layout.generator)
            parts.append(part)
            i += 1
            if scenario.phases > 1 and server.name == "proxy":
                memory = procs.memory_kb(pids) if pids else {}
                timeline.append({"phase": i, "requests_total": sum(p["requests"] for p in parts),
                                 "seconds": round(time.time() - wall0, 1), **memory})
                log(f"  phase {i}: {timeline[-1]['requests_total']} requests, "
                    f"RSS {memory.get('rss_kb', 0) / 1024:.1f} MB")
            total = sum(p["requests"] for p in parts)
            if options.max_requests and scenario.phases > 1 and server.name == "proxy":
                if total >= options.max_requests or i >= 1000:
                    break
            elif i >= phases:
                break
        wall = time.time() - wall0
        cpu = procs.cpu_seconds(pids) - cpu0 if pids else None
        helpers_cpu = procs.cpu_seconds(helpers) - helpers0
        result = _merge(parts)
        n = result["requests"]
        result["server"] = server.name
        if server.extra.get("what"):
            result["what"] = server.extra["what"]
        if cpu is not None:
            result["cpu_s"] = round(cpu, 3)
            result["cpu_us_per_req"] = round(cpu / n * 1e6, 1) if n else None
            # What one core would serve at this CPU cost: steadier than req/s on a
            # shared machine, where neighbours take wall time but not our CPU time.
            result["rps_per_core"] = round(n / cpu) if cpu > 0 else None
            result["cpu_busy_pct"] = round(cpu / wall * 100, 1) if wall else None
            memory = procs.memory_kb(pids)
            result["peak_rss_mb"] = round(memory["peak_rss_kb"] / 1024, 1)
            result["rss_mb"] = round(memory["rss_kb"] / 1024, 1)
        result["helpers_cpu_us_per_req"] = round(helpers_cpu / n * 1e6, 1) if n else None
        gen_cpu = result.get("generator_cpu_s", 0.0)
        result["generator_cpu_us_per_req"] = round(gen_cpu / n * 1e6, 1) if n else None
        if self.layout.enabled and self.layout.helpers == self.layout.generator:
            result["generator_core_busy_pct"] = round((gen_cpu + helpers_cpu) / wall * 100, 1)
        if timeline:
            result["memory_timeline"] = timeline
        if spy is not None:
            from bench.harness import profile
            try:
                spy.wait(30)
            except Exception:
                spy.kill()
                spy.wait()
            if raw.exists():
                summary = profile.summarise(raw)
                text = raw.with_suffix("").with_suffix(".summary.txt")
                text.write_text(profile.render(summary))
                result["profile"] = {"raw": str(raw), "summary": str(text),
                                     "top_self": summary["self"][:10],
                                     "top_inclusive": summary["inclusive"][:15]}
                log(f"  profile: {text}")
            else:
                log(f"  profile: py-spy wrote nothing ({spy.stderr.read().decode()[-300:]})")
        if events_before is not None:
            after = proxy_metrics(server) or {}
            time.sleep(1.0)
            settled = proxy_metrics(server) or {}
            # What the proxy itself counted during the run (whatever the generator saw).
            result["proxy_counted"] = {
                "by_status_class": _delta(after.get("status_class", {}),
                                          events_before.get("status_class", {})),
                "by_decision": _delta(after.get("decision", {}),
                                      events_before.get("decision", {})),
                "redis_up_at_end": after.get("redis_up")}
            result["events"] = {
                "published_during_run":
                    after.get("published", 0) - events_before.get("published", 0),
                "queued_at_end": after.get("queued"), "queued_1s_later": settled.get("queued"),
                "dropped_total": settled.get("dropped"),
            }
        return result


def _merge(parts: list[dict]) -> dict:
    """Phases of one target -> one result: counts summed; latency of the last phase."""
    if len(parts) == 1:
        return dict(parts[0])
    last = dict(parts[-1])
    last["requests"] = sum(p["requests"] for p in parts)
    last["duration_s"] = round(sum(p["duration_s"] for p in parts), 3)
    last["rps"] = round(last["requests"] / last["duration_s"], 1) if last["duration_s"] else 0
    last["generator_cpu_s"] = round(sum(p.get("generator_cpu_s", 0) for p in parts), 3)
    last["errors"] = {k: sum(p["errors"].get(k, 0) for p in parts) for k in parts[0]["errors"]}
    if all("statuses" in p for p in parts):
        statuses: dict[str, int] = {}
        for p in parts:
            for k, v in p["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
        last["statuses"] = statuses
    last["latency_note"] = "latency of the last phase"
    last["phases"] = len(parts)
    return last


def compare(results: dict) -> None:
    """Add, to every target but direct, its figures relative to the direct run."""
    direct = results.get("direct")
    if not direct:
        return
    for name, result in results.items():
        if name == "direct":
            continue
        result.update(_relative(result, direct))


def _relative(result: dict, direct: dict) -> dict:
    lat, base = result["latency_us"], direct["latency_us"]
    return {"added_latency_us": {p: round(lat[p] - base[p], 1)
                                 for p in ("p50", "p90", "p99") if p in lat and p in base},
            "rps_vs_direct": round(result["rps"] / direct["rps"], 3) if direct["rps"] else None}


def compare_rounds(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Repeated runs -> one result per target. Each target's figures are those of its
    median-throughput run; its ratio to direct and its added latency are the medians of
    the per-round values (each round measures direct and the target back to back, so a
    noisy neighbour shifts both)."""
    results = {name: _median(rs) for name, rs in runs.items() if rs}
    direct_runs = runs.get("direct") or []
    for name, rs in runs.items():
        if name == "direct" or not direct_runs:
            continue
        rounds = [_relative(r, d) for r, d in zip(rs, direct_runs)]
        if not rounds:
            continue
        merged = {"rps_vs_direct": _med([r["rps_vs_direct"] for r in rounds
                                         if r["rps_vs_direct"] is not None]),
                  "added_latency_us": {p: _med([r["added_latency_us"][p] for r in rounds])
                                       for p in rounds[0]["added_latency_us"]}}
        if len(rounds) > 1:
            merged["per_round"] = rounds
        results[name].update(merged)
    return results


def _med(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def problems(result: dict) -> list[str]:
    """Why a run is not healthy: no requests, errors, answers other than 2xx/429."""
    out = []
    if result["requests"] == 0:
        out.append("no request completed")
    errors = result.get("errors", {})
    for kind in ("connect", "read", "write", "timeout"):
        if errors.get(kind):
            out.append(f"{errors[kind]} {kind} errors")
    if "statuses" in result:
        bad = {k: v for k, v in result["statuses"].items()
               if not (200 <= int(k) < 300 or int(k) == 429)}
        if bad:
            out.append(f"unexpected statuses {bad}")
    elif errors.get("status"):
        out.append(f"{errors['status']} answers outside 2xx/3xx")
    # The proxy's own counts: 5xx, or keys refused. (Its "error" decisions in 4xx are
    # mostly 499s: requests in flight when the generator closed its connections.)
    counted = result.get("proxy_counted", {})
    if counted.get("by_status_class", {}).get("5xx") or \
            counted.get("by_decision", {}).get("unauthorized"):
        out.append(f"the proxy counted {counted.get('by_status_class')}, "
                   f"decisions {counted.get('by_decision')}")
    return out


# -- one scenario ---------------------------------------------------------------------------

def make_keys(n: int) -> list[str]:
    from rateguard.snapshot.keys import new_key
    return [new_key() for _ in range(n)]


def run_scenario(scenario: Scenario, options: Options, infra: Infra, layout: procs.Layout,
                 workdir: Path) -> dict:
    keys = make_keys(scenario.keys)
    upstream = start_upstream(workdir, scenario.size, layout)
    servers: list[Server] = [upstream]
    try:
        proxy = start_proxy(workdir, scenario, upstream, keys, infra, layout)
        servers.append(proxy)
        check_proxy(proxy, keys[0], scenario, options)
        for source in options.compare:
            other = start_proxy(workdir, scenario, upstream, keys, infra, layout, source)
            servers.append(other)
            check_proxy(other, keys[0], scenario, options)
        for baseline in options.baselines:
            if baseline == "aiohttp":
                servers.append(start_aiohttp(workdir, upstream, keys, infra, layout,
                                             limit=scenario.policy))
            elif baseline == "nginx":
                server = start_nginx(workdir, upstream, layout)
                if server is not None:
                    servers.append(server)
        measurer = Measurer(options, layout, lambda: infra.pids + upstream.pids())
        runs: dict[str, list[dict]] = {s.name: [] for s in servers}
        for r in range(options.repeat):
            for server in servers:
                is_direct = server is upstream
                if is_direct:
                    procs.pin(upstream.pids(), layout.server)
                rate = f", {scenario.rate:g}/s" if scenario.rate else ""
                round_ = f" run {r + 1}/{options.repeat}" if options.repeat > 1 else ""
                log(f"{scenario.name}: {server.name} ({scenario.connections} connections"
                    f"{rate}, {options.duration:g}s){round_}")
                try:
                    runs[server.name].append(measurer.measure(server, scenario, keys))
                finally:
                    if is_direct:
                        procs.pin(upstream.pids(), layout.helpers)
                result = runs[server.name][-1]
                log(f"  {result['rps']:.0f} req/s, p50 {result['latency_us']['p50']:.0f} us, "
                    f"p99 {result['latency_us']['p99']:.0f} us"
                    + (f", {result['cpu_us_per_req']} us CPU/req" if result.get("cpu_us_per_req")
                       else ""))
        results = compare_rounds(runs)
        report = {"scenario": scenario.name, "description": scenario.description,
                  "features": scenario.features, "connections": scenario.connections,
                  "response_bytes": scenario.size, "keys": scenario.keys,
                  "rate": scenario.rate or None, "duration_s": options.duration,
                  "repeat": options.repeat, "results": results,
                  "loadavg_at_end": _loadavg()}
        if options.repeat > 1:
            report["all_runs"] = runs
        return report
    finally:
        for server in reversed(servers):
            server.stop()
        if options.log_dir is not None:
            for server in servers:
                if server.name != "direct" and server.log_path and server.log_path.exists():
                    target = options.log_dir / f"{scenario.name}-{server.name}.log"
                    target.write_bytes(server.log_path.read_bytes()[-1_000_000:])


def _loadavg() -> list[str] | None:
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return None


def _median(runs: list[dict]) -> dict:
    """Of repeated runs, the one with the median throughput (its figures stay consistent)."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r["rps"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rps_all_runs"] = [r["rps"] for r in runs]
    chosen["rps_stdev"] = round(statistics.pstdev(chosen["rps_all_runs"]), 1)
    return chosen


def check_proxy(proxy: Server, key: str, scenario: Scenario, options: Options) -> None:
    """One request through the proxy before any load: it must answer 200 with the body."""
    import urllib.request
    header = ("Authorization", f"Bearer {key}") if options.key_header.lower() == "authorization" \
        else (options.key_header, key)
    request = urllib.request.Request(proxy.url, headers={header[0]: header[1]})
    try:
        with procs.urlopen(request, 10) as response:
            body = response.read()
            status, headers = response.status, response.headers
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the proxy answered {exc.code} to a valid key: "
                           f"{exc.read()[:300]!r}; log:\n{procs.tail(proxy.log_path)}") from None
    if status != 200 or len(body) != scenario.size:
        raise RuntimeError(f"the proxy answered {status} with {len(body)} bytes "
                           f"(expected 200 with {scenario.size})")
    if scenario.policy and headers.get("RateLimit-Limit") is None:
        raise RuntimeError("the proxy answered without RateLimit-* headers on a limited API")


# -- against an existing deployment ------------------------------------------------------

def run_target(url: str, key: str, options: Options, connections: int, rate: float,
               direct_url: str | None, target_pid: int | None, name: str) -> dict:
    """Only the load part, against a running deployment (e.g. a kind NodePort)."""
    scenario = Scenario(name, f"existing deployment at {url}", connections=connections,
                        rate=rate, policy=False, events=False)
    layout = procs.Layout(options.pin)
    servers = []
    if direct_url:
        servers.append(Server("direct", direct_url))
    servers.append(Server("proxy", url, pid=target_pid))
    measurer = Measurer(options, layout, lambda: [])
    results = {}
    for server in servers:
        log(f"{name}: {server.name} at {server.url} ({connections} connections, "
            f"{options.duration:g}s)")
        results[server.name] = measurer.measure(server, scenario, [key])
        r = results[server.name]
        log(f"  {r['rps']:.0f} req/s, p50 {r['latency_us']['p50']:.0f} us, "
            f"p99 {r['latency_us']['p99']:.0f} us")
    compare(results)
    return {"scenario": name, "description": scenario.description, "target": url,
            "connections": connections, "rate": rate or None, "duration_s": options.duration,
            "results": results}


def new_workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"rateguard-bench-{uuid.uuid4().hex[:6]}-")


def dump(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
