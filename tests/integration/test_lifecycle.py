"""Process lifecycle: SIGTERM drain, start-up errors, a dead Redis, `rateguard up`."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest

from rateguard.embedded.servers import free_port
from tests.integration.conftest import Keys, unique, wait_until
from tests.servers import ProxyProcess, fetch

pytestmark = pytest.mark.integration


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("REDIS_URL", "KAFKA_BROKERS", "CLICKHOUSE_URL", "DATABASE_URL")}
    return subprocess.run([sys.executable, "-m", "rateguard", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("env,expected", [
    ({}, "error: REDIS_URL: not set"),
    ({"REDIS_URL": "http://localhost"}, "error: REDIS_URL: scheme must be one of"),
    ({"REDIS_URL": "redis://x", "KAFKA_BROKERS": "nope"}, "error: KAFKA_BROKERS: 'nope' is not"),
    ({"REDIS_URL": "redis://x", "KAFKA_BROKERS": "k:9092", "PROXY_PORT": "x"},
     "error: PROXY_PORT: is malformed"),
])
def test_bad_settings_stop_the_proxy_with_one_line(env, expected, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("workspaces: []\n")
    result = run_cli("proxy", "--config", str(config), env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(expected)
    assert result.stderr.count("\n") == 1, result.stderr


def test_bad_config_file_stops_the_proxy_with_one_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("workspaces:\n  - id: a\n    apis: [{id: x, upstream: 'nope'}]\n")
    result = run_cli("proxy", "--config", str(config),
                     env={"REDIS_URL": "redis://127.0.0.1:1", "KAFKA_BROKERS": "127.0.0.1:1"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: broken.yaml: workspaces[0].apis[0].upstream:")
    assert result.stderr.count("\n") == 1


def test_version_and_help():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("rateguard, version ")
    result = run_cli("--help")
    for command in ("proxy", "web", "analytics", "alerts", "up", "db"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), command


async def test_sigterm_drains_in_flight_requests_and_flushes_events(
        workdir, env, upstream, analytics, session):
    keys = Keys()
    config = {"workspaces": [{"id": "drain", "apis": [
        {"id": "slow", "prefix": "/", "upstream": upstream.url}],
        "keys": [keys.entry("k")]}]}
    proxy = ProxyProcess(config, env, workdir, unique("drain")).start()
    try:
        slow = asyncio.ensure_future(fetch(session, "GET", f"{proxy.url}/slow?s=1.5",
                                           headers=keys.auth("k")))
        await asyncio.sleep(0.4)
        proxy.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        status, _, body = await fetch(
            session, "GET", f"http://127.0.0.1:{proxy.metrics_port}/readyz")
        assert status == 503 and orjson.loads(body)["draining"] is True
        status, headers, _ = await slow
        assert status == 200, "an in-flight request must complete during the drain"
        request_id = headers["X-Request-Id"]
        code = await asyncio.get_running_loop().run_in_executor(None, proxy.proc.wait, 15)
        assert code == 0
    finally:
        proxy.stop()
    clickhouse = analytics.clickhouse

    async def landed():
        _, rows = await clickhouse.query(
            f"SELECT count() FROM {clickhouse.database}.api_events WHERE id = {{i:String}}",
            {"i": request_id})
        return rows[0][0] == 1

    assert await wait_until(landed, timeout=15), "the drained request's event was lost"


async def test_dead_redis_follows_each_policys_failure_mode(workdir, env, upstream, session):
    keys = Keys()
    config = {"workspaces": [{
        "id": "nored",
        "policies": [{"id": "open", "limits": ["2/min"], "failure_mode": "open"},
                     {"id": "closed", "limits": ["2/min"], "failure_mode": "closed"}],
        "apis": [{"id": "api", "prefix": "/", "upstream": upstream.url}],
        "keys": [keys.entry("open", policy="open"), keys.entry("closed", policy="closed")]}]}
    dead = f"redis://127.0.0.1:{free_port()}"
    proxy = ProxyProcess(config, {**env, "REDIS_URL": dead}, workdir, unique("nored"))
    from rateguard.embedded.servers import wait_for_port
    import subprocess as sp
    with open(proxy.log_path, "ab") as log:
        proxy.proc = sp.Popen([sys.executable, "-m", "rateguard", "proxy", "--config",
                               str(proxy.config_path)], env=proxy.env, stdout=log,
                              stderr=sp.STDOUT)
    try:
        wait_for_port(proxy.port, 20, "proxy", proxy.proc)
        # Ready all the same (every replica shares the Redis; see app.readiness).
        status, _, body = await fetch(session, "GET", f"{proxy.url}/readyz")
        detail = orjson.loads(body)
        assert status == 200 and detail["ready"] is True and detail["redis"] == "down"
        loop = asyncio.get_running_loop()
        started = loop.time()
        opened = [(await fetch(session, "GET", f"{proxy.url}/x", headers=keys.auth("open")))[0]
                  for _ in range(3)]
        assert opened == [200, 200, 429]  # the same policy, counted in this replica
        status, _, body = await fetch(session, "GET", f"{proxy.url}/x",
                                      headers=keys.auth("closed"))
        assert status == 503 and orjson.loads(body)["error"] == "limiter_unavailable"
        assert loop.time() - started < 1.0, "a dead Redis must not add waits per request"
    finally:
        proxy.stop()


def test_rateguard_up_serves_the_printed_curl_and_stops_cleanly(tmp_path):
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run the printed line as a user would")
    proxy_port, metrics_port = free_port(), free_port()
    clean = {k: v for k, v in os.environ.items()
             if k not in ("REDIS_URL", "KAFKA_BROKERS", "CLICKHOUSE_URL", "DATABASE_URL")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rateguard", "up", "--data-dir", str(tmp_path / "data"),
         "--proxy-port", str(proxy_port), "--metrics-port", str(metrics_port)],
        env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        deadline = time.monotonic() + 90
        curl_line = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("curl "):
                curl_line = line.strip()
            if line.startswith("Press Ctrl-C"):
                break
        assert curl_line, "".join(output)
        first = subprocess.run(curl_line, shell=True, capture_output=True, text=True, timeout=10)
        assert first.stdout.startswith("HTTP/1.1 200"), first.stdout
        assert "ratelimit-remaining: 9" in first.stdout.lower()
        statuses = [subprocess.run(curl_line + " -o /dev/null -w '%{http_code}'", shell=True,
                                   capture_output=True, text=True, timeout=10).stdout
                    for _ in range(10)]
        assert statuses == ["200"] * 9 + ["429"]
        time.sleep(1.0)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            query = subprocess.run(
                [sys.executable, "-m", "rateguard", "analytics", "query", "--data-dir",
                 str(tmp_path / "data")], env=clean, capture_output=True, text=True, timeout=30)
            if query.stdout.count("/echo/hello") >= 11:
                break
            time.sleep(1)
        assert query.returncode == 0, query.stderr
        assert query.stdout.count("/echo/hello") >= 11, query.stdout
        assert "limited" in query.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, "".join(output) + rest
    assert "RateGuard stopped." in rest
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True,
                               text=True).stdout.split()
    assert leftovers == [], "processes left behind"


def test_rateguard_up_stops_cleanly_on_ctrl_c(tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group: `up` and,
    unless it shields them, its servers and the proxy. It stops in dependency order (proxy
    and workers, then the servers), one line per component, exit 0, no traceback and no
    client errors from servers that went first."""
    proxy_port, metrics_port, web_port = free_port(), free_port(), free_port()
    clean = {k: v for k, v in os.environ.items()
             if k not in ("REDIS_URL", "KAFKA_BROKERS", "CLICKHOUSE_URL", "DATABASE_URL")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rateguard", "up", "--data-dir", str(tmp_path / "data"),
         "--proxy-port", str(proxy_port), "--metrics-port", str(metrics_port),
         "--web-port", str(web_port)],
        env={**clean, "LOG_LEVEL": "info"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)  # its own group, as a shell job is
    output = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        assert output and output[-1].startswith("Press Ctrl-C"), "".join(output)
        time.sleep(2)  # the analytics consumer and the alerts leader are at work
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        rest, _ = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    stopping = rest[rest.index("Stopping"):] if "Stopping" in rest else rest
    assert proc.returncode == 0, "".join(output) + rest
    for bad in ("Traceback", "CancelledError", "aiokafka", "ERROR", "no longer leader",
                "KafkaConnectionError"):
        assert bad not in rest, f"{bad!r} after Ctrl-C:\n{rest}"
    components = ["Proxy", "Web", "Alerts", "Analytics", "Echo upstream", "Kafka broker",
                  "Valkey", "PostgreSQL"]
    lines = [line.strip() for line in stopping.splitlines() if line.strip()]
    order = [next((i for i, line in enumerate(lines) if line.startswith(name)), -1)
             for name in components]
    assert -1 not in order and order == sorted(order), \
        f"one line per component, proxy and workers before the servers:\n{stopping}"
    assert lines[-1] == "RateGuard stopped.", stopping
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True,
                               text=True).stdout.split()
    assert leftovers == [], "processes left behind"
