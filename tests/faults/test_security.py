"""Security at the proxy: the SSRF guard on configured upstreams, and no secret in
any log a run leaves behind."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
import sys
import time

import pytest
import yaml

from rateguard.embedded.servers import free_port
from tests.faults.conftest import IN_PROCESS_LOG, Keys, Pipeline, new_clickhouse, unique
from tests.servers import fetch

pytestmark = pytest.mark.integration


def run_proxy(config_path, **env):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("RATEGUARD_ENV", "ALLOW_PRIVATE_UPSTREAMS")}
    return subprocess.run(
        [sys.executable, "-m", "rateguard", "proxy", "--config", str(config_path)],
        env={**clean, "REDIS_URL": "redis://127.0.0.1:1", "KAFKA_BROKERS": "127.0.0.1:1",
             **env}, capture_output=True, text=True, timeout=30)


def config_with(upstream: str) -> dict:
    return {"workspaces": [{"id": "ssrf", "apis": [
        {"id": "api", "prefix": "/", "upstream": upstream}]}]}


@pytest.mark.parametrize("upstream,env", [
    ("http://169.254.169.254/latest/meta-data", {"RATEGUARD_ENV": "development"}),
    ("http://169.254.169.254/", {"RATEGUARD_ENV": "production",
                                 "ALLOW_PRIVATE_UPSTREAMS": "true"}),
    ("http://metadata.google.internal/computeMetadata/v1", {"RATEGUARD_ENV": "development"}),
    ("http://2852039166/", {"RATEGUARD_ENV": "development"}),       # 169.254.169.254
    ("http://[::ffff:169.254.169.254]/", {"RATEGUARD_ENV": "development"}),
    ("http://[fd00:ec2::254]/", {"RATEGUARD_ENV": "development"}),
    ("http://0.0.0.0:8080/", {"RATEGUARD_ENV": "development"}),
    ("http://10.0.0.7:8080/", {"RATEGUARD_ENV": "production"}),
    ("http://192.168.1.10/", {}),                                    # production by default
    ("http://127.0.0.1:8080/", {"RATEGUARD_ENV": "production"}),
    ("http://localhost:8080/", {"RATEGUARD_ENV": "production"}),
])
def test_ssrf_guard_refuses_the_upstream_with_one_line(tmp_path, upstream, env):
    path = tmp_path / "ssrf.yaml"
    path.write_text(yaml.safe_dump(config_with(upstream)))
    result = run_proxy(path, **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ssrf.yaml: workspaces[0].apis[0].upstream:")
    assert result.stderr.count("\n") == 1, result.stderr


async def test_private_upstreams_allowed_in_production_only_when_set(
        start_proxy, upstream, session):
    keys = Keys()
    config = {"workspaces": [{"id": "private", "apis": [
        {"id": "api", "prefix": "/", "upstream": upstream.url}], "keys": [keys.entry("k")]}]}
    proxy = start_proxy(config, "private", RATEGUARD_ENV="production",
                        ALLOW_PRIVATE_UPSTREAMS="true")
    status, _, _ = await fetch(session, "GET", f"{proxy.url}/x", headers=keys.auth("k"))
    assert status == 200

    # A live edit to a metadata address is refused; the last good config keeps serving.
    config["workspaces"][0]["apis"][0]["upstream"] = "http://169.254.169.254/"
    proxy.update_config(config)
    deadline = time.monotonic() + 5
    while "config reload failed" not in proxy.log() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert "169.254.169.254 is link-local" in proxy.log()
    status, _, _ = await fetch(session, "GET", f"{proxy.url}/x", headers=keys.auth("k"))
    assert status == 200


async def test_secrets_never_appear_in_logs(
        workdir, start_proxy, upstream, session, kafka_brokers, clickhouse_url,
        in_process_log):
    """A run that uses API keys every way a client can (header, X-API-Key, query
    string, revoked, unknown, malformed requests, errors upstream) and an upstream
    credential from the config; then every log of this session's proxies and of this
    process (the analytics ingesters, at DEBUG) is scanned for each of them."""
    topic = unique("secrets")
    brokers = tuple(kafka_brokers.split(","))
    clickhouse = await new_clickhouse(clickhouse_url)
    pipeline = await Pipeline(clickhouse, brokers, topic).start()
    keys = Keys()
    upstream_secret = "upstream-credential-" + os.urandom(8).hex()
    dead = f"http://127.0.0.1:{free_port()}"
    config = {"workspaces": [{"id": "secrets", "policies": [
        {"id": "tiny", "limits": ["2/min"]}], "apis": [
        {"id": "api", "prefix": "/", "upstream": upstream.url,
         "upstream_headers": {"X-Upstream-Token": upstream_secret}},
        {"id": "dead", "prefix": "/dead", "upstream": dead}],
        "keys": [keys.entry("good", policy="tiny"), keys.entry("revoked", revoked=True)]}]}
    unknown = "rg_" + os.urandom(24).hex()
    try:
        proxy = start_proxy(config, "secrets", KAFKA_TOPIC=topic, LOG_LEVEL="debug")
        good, revoked = keys.plain["good"], keys.plain["revoked"]
        ids = []
        for headers, path in [
                ({"Authorization": f"Bearer {good}"}, "/echo"),
                ({"X-API-Key": good}, "/echo"),
                ({"X-API-Key": good}, "/echo"),             # limited: 429
                ({}, f"/echo?api_key={good}"),
                ({"Authorization": f"Bearer {revoked}"}, "/echo"),
                ({"Authorization": f"Bearer {unknown}"}, "/echo"),
                ({"X-API-Key": unknown}, f"/dead/x?key={unknown}"),
                ({"Authorization": f"Bearer {good}"}, "/a/../etc/passwd"),
        ]:
            status, response_headers, _ = await fetch(session, "GET", f"{proxy.url}{path}",
                                                      headers=headers)
            assert status < 500 or path.startswith("/dead")
            ids.append(response_headers["X-Request-Id"])
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(f"GET /echo HTTP/1.1\r\nAuthorization: Bearer {good}\r\nX: a\rb\r\n\r\n"
                     .encode())
        await reader.read()
        writer.close()
        await pipeline.wait_exactly_once(ids)
    finally:
        await pipeline.stop()
        await clickhouse.close()
    proxy.stop()

    secrets = [good, revoked, unknown, upstream_secret]
    logs = sorted(workdir.glob("*.log"))
    assert any(p.name == IN_PROCESS_LOG for p in logs) and len(logs) >= 2
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a secret appears in {path.name}"


async def test_a_name_resolving_to_a_refused_address_is_refused_at_connect_time(
        start_proxy, upstream, session):
    """DNS rebinding: the config names a host that passes the config check, but it
    resolves to loopback, which production refuses. The proxy checks the resolved
    address and connects only to the address it checked."""
    import socket

    import orjson

    name = socket.gethostname()
    resolved = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)[0][4][0]
    assert ipaddress.ip_address(resolved).is_private, \
        f"this test needs the hostname to resolve to a private address, got {resolved}"
    keys = Keys()
    config = {"workspaces": [{"id": "rebind", "apis": [
        {"id": "a", "prefix": "/", "upstream": f"http://{name}:{upstream.port}"}],
        "keys": [keys.entry("k")]}]}
    proxy = start_proxy(config, "rebind", RATEGUARD_ENV="production")
    status, _, body = await fetch(session, "GET", f"{proxy.url}/x", headers=keys.auth("k"))
    assert status == 502
    assert "refused" in orjson.loads(body)["message"]
