"""The `rateguard` command. Each subcommand reads Settings from the environment and
hands plain arguments to its component; errors an operator can fix are one line."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from pathlib import Path

import click

from rateguard import __version__
from rateguard.errors import RateGuardError
from rateguard.settings import SPEC, Settings


def _settings() -> Settings:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.LOG_LEVEL.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.root.level))
    return settings


def _run(coro) -> None:
    import uvloop

    uvloop.run(coro)


def _env_table() -> str:
    return "\n".join(f"  {name:<26} {help_}" for name, (_p, _d, help_) in SPEC.items())


class _Group(click.Group):
    """Turns RateGuardError into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RateGuardError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rateguard")
def main() -> None:
    """RateGuard: an API gateway for API keys, exact distributed rate limits and
    usage analytics.

    Components run as subcommands of one program (one container image). Settings come
    from environment variables; `rateguard up` needs none.
    """


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              envvar="RATEGUARD_CONFIG",
              help="Declarative YAML config (APIs, keys, policies); reloaded when it changes.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Listen address.")
@click.option("--port", type=int, default=None,
              help="Listen port (default: PROXY_PORT, 3001).")
@click.option("--no-events", is_flag=True, help="Do not publish request events to Kafka.")
def proxy(config_file: str | None, host: str, port: int | None, no_events: bool) -> None:
    """Run the data plane: route, authenticate, rate-limit and forward requests.

    Serves traffic on PROXY_PORT (3001) with /healthz and /readyz, and Prometheus
    metrics on METRICS_PORT (9090). Needs REDIS_URL, KAFKA_BROKERS (unless
    --no-events) and a config source (--config FILE).
    """
    settings = _settings()
    settings.require("REDIS_URL")
    if not no_events:
        settings.require("KAFKA_BROKERS")
    if not config_file:
        raise RateGuardError("proxy: no config source; pass --config FILE "
                             "(or set RATEGUARD_CONFIG)")
    from rateguard.proxy.app import serve
    from rateguard.snapshot.yaml_source import YamlSource, load_file

    load_file(config_file)  # fail now, with one line, if the file is bad
    _run(serve(settings, YamlSource(config_file), host=host, port=port, events=not no_events))


@main.group(cls=_Group, invoke_without_command=True)
@click.pass_context
def analytics(ctx: click.Context) -> None:
    """Run the analytics worker: Kafka events -> ClickHouse (exactly once).

    Needs KAFKA_BROKERS and CLICKHOUSE_URL; creates the ClickHouse database and tables
    if missing; serves /healthz and /readyz on HEALTH_PORT (8080).
    `rateguard analytics query` shows what has landed.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings()
    from rateguard.analytics.worker import AnalyticsWorker
    from rateguard.events.topics import ensure_topic
    from rateguard.workers import run_worker

    worker = AnalyticsWorker(settings)

    async def main_() -> None:
        await ensure_topic(settings.KAFKA_BROKERS, settings.KAFKA_TOPIC)
        await run_worker(worker, port=settings.HEALTH_PORT)

    _run(main_())


@analytics.command("query")
@click.option("--minutes", default=60, show_default=True, type=click.IntRange(1, 525600),
              help="How far back to look.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000),
              help="Rows per table.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".rateguard"), show_default=True,
              help="Data directory of a running `rateguard up` (embedded ClickHouse).")
def analytics_query(minutes: int, limit: int, data_dir: Path) -> None:
    """Show the last requests and per-minute counts from ClickHouse."""
    from rateguard.analytics import report

    settings = Settings.from_env()
    url = settings.CLICKHOUSE_URL
    results = {}
    for what in ("recent", "minutes"):
        if url and not url.startswith("chdb://"):
            results[what] = asyncio.run(report.direct(
                url, settings.CLICKHOUSE_DATABASE, what, minutes, limit))
        else:
            results[what] = report.via_up(data_dir, what, minutes, limit)
    click.echo(f"Last requests (past {minutes} min):")
    click.echo(report.table(results["recent"]["columns"], results["recent"]["rows"]))
    click.echo(f"\nPer minute (past {minutes} min):")
    click.echo(report.table(results["minutes"]["columns"], results["minutes"]["rows"]))


@main.command()
def web() -> None:
    """Run the dashboard and management API on port 3000 (not built yet)."""
    raise RateGuardError("web: the dashboard and management API are not built yet "
                         "(see the control-plane issue); use `rateguard proxy --config`")


@main.command()
def alerts() -> None:
    """Run the alerts worker: rules over ClickHouse -> notifications (not built yet)."""
    raise RateGuardError("alerts: the alerts worker is not built yet (see the alerts issue)")


@main.command()
@click.argument("name")
def worker(name: str) -> None:
    """Run any sidecar worker registered in the `rateguard.workers` entry-point group."""
    settings = _settings()
    from rateguard import workers

    instance = workers.load(name)(settings)
    _run(workers.run_worker(instance, port=settings.HEALTH_PORT))


@main.group(cls=_Group)
def db() -> None:
    """Schema migrations and demo data."""


@db.command("migrate")
def db_migrate() -> None:
    """Create what the running system needs: the events topic (KAFKA_BROKERS) and the
    ClickHouse database and tables (CLICKHOUSE_URL), whichever are set. Idempotent."""
    settings = _settings()
    if not settings.KAFKA_BROKERS and not settings.CLICKHOUSE_URL:
        raise RateGuardError("db migrate: set KAFKA_BROKERS and/or CLICKHOUSE_URL")

    async def main_() -> None:
        if settings.KAFKA_BROKERS:
            from rateguard.events.topics import ensure_topic
            await ensure_topic(settings.KAFKA_BROKERS, settings.KAFKA_TOPIC)
            click.echo(f"topic {settings.KAFKA_TOPIC}: ready")
        if settings.CLICKHOUSE_URL:
            from rateguard.analytics.clickhouse import ClickHouse
            clickhouse = ClickHouse(settings.CLICKHOUSE_URL, settings.CLICKHOUSE_DATABASE,
                                    settings.ANALYTICS_TTL_DAYS)
            try:
                await clickhouse.setup()
            finally:
                await clickhouse.close()
            click.echo(f"clickhouse {settings.CLICKHOUSE_DATABASE}: ready")

    _run(main_())


@main.group(cls=_Group)
def keys() -> None:
    """API key helpers for the declarative config."""


@keys.command("new")
def keys_new() -> None:
    """Print a new random key and the sha256 to put in the config."""
    from rateguard.snapshot.keys import hash_key, new_key

    key = new_key()
    click.echo(f"key:    {key}\nsha256: {hash_key(key)}")


@keys.command("hash")
@click.argument("key")
def keys_hash(key: str) -> None:
    """Print the sha256 of KEY, as stored in the config."""
    from rateguard.snapshot.keys import hash_key

    click.echo(hash_key(key.strip()))


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".rateguard"), show_default=True,
              help="Where the embedded servers keep their data.")
@click.option("--proxy-port", default=3001, show_default=True, type=int)
@click.option("--metrics-port", default=9090, show_default=True, type=int)
def up(data_dir: Path, proxy_port: int, metrics_port: int) -> None:
    """Run the whole system on this machine.

    Any of DATABASE_URL, REDIS_URL, KAFKA_BROKERS and CLICKHOUSE_URL that is not set is
    replaced by an embedded server (PostgreSQL, Valkey, a Tansu broker, chdb), so no
    setting is needed. Seeds a demo API with a key and prints a curl line that works.
    """
    from rateguard.up import run_up

    Settings.from_env()  # a malformed variable stops us before anything starts
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    run_up(data_dir, proxy_port, metrics_port)


main.help = inspect.cleandoc(main.help or "") + "\n\nEnvironment variables:\n\n\b\n" + _env_table()
