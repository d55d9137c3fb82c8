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
    --no-events) and a config source: --config FILE, or else DATABASE_URL (the
    control plane's PostgreSQL, followed live through LISTEN/NOTIFY; ENCRYPTION_KEY
    decrypts upstream credentials).
    """
    settings = _settings()
    settings.require("REDIS_URL")
    if not no_events:
        settings.require("KAFKA_BROKERS")
    from rateguard.proxy.app import serve

    if config_file:
        from rateguard.snapshot.yaml_source import YamlSource, load_file

        from rateguard.net.egress import from_settings

        egress = from_settings(settings)
        load_file(config_file, egress)  # fail now, with one line, if the file is bad
        source = YamlSource(config_file, guard=egress)
    elif settings.DATABASE_URL:
        from rateguard.snapshot.pg_source import PgSource

        source = PgSource(settings.DATABASE_URL, _keyring(settings))
    else:
        raise RateGuardError("proxy: no config source; pass --config FILE "
                             "(or set RATEGUARD_CONFIG), or set DATABASE_URL")
    _run(serve(settings, source, host=host, port=port, events=not no_events))


def _keyring(settings: Settings):
    if not settings.ENCRYPTION_KEY:
        return None
    from rateguard.crypto import KeyRing

    return KeyRing(settings.ENCRYPTION_KEY)


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
@click.option("--host", default="0.0.0.0", show_default=True, help="Listen address.")
@click.option("--port", default=3000, show_default=True, type=int, help="Listen port.")
def web(host: str, port: int) -> None:
    """Run the management API (/api/v1, OpenAPI at /api/v1/openapi.json) on port 3000.

    Needs DATABASE_URL (migrated with `rateguard db migrate`) and JWT_SECRET;
    ENCRYPTION_KEY to store upstream credentials; CLICKHOUSE_URL for the analytics
    endpoints. Serves /healthz and /readyz.
    """
    settings = _settings()
    settings.require("DATABASE_URL", "JWT_SECRET")
    _keyring(settings)  # a malformed ENCRYPTION_KEY stops us now, in one line
    from rateguard.web.app import serve

    _run(serve(settings, host, port))


@main.group(cls=_Group, invoke_without_command=True)
@click.pass_context
def alerts(ctx: click.Context) -> None:
    """Run the alerts worker: rules over ClickHouse -> notifications.

    Evaluates every ALERTS_INTERVAL_SECONDS (30) and notifies on firing and resolved
    (signed webhook, Slack, SMTP). Run as many replicas as you like: one leads (a
    PostgreSQL advisory lock), the others stand by and take over within seconds.
    Needs DATABASE_URL, CLICKHOUSE_URL and ENCRYPTION_KEY (channel secrets); serves
    /healthz and /readyz on HEALTH_PORT (8080). `rateguard alerts rules ...` manages rules.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings()
    settings.require("DATABASE_URL", "CLICKHOUSE_URL")
    _keyring(settings)
    from rateguard.alerts.worker import AlertsWorker
    from rateguard.workers import run_worker

    _run(run_worker(AlertsWorker(settings), port=settings.HEALTH_PORT))


class _alert_store:
    """An AlertStore on a small pool, for one CLI command."""

    def __init__(self, settings: Settings) -> None:
        self.inner = _repository(settings)

    async def __aenter__(self):
        from rateguard.alerts.store import AlertStore

        return AlertStore(await self.inner.__aenter__())

    async def __aexit__(self, *exc) -> None:
        await self.inner.__aexit__(*exc)


@alerts.group("rules", cls=_Group)
def alerts_rules() -> None:
    """Alert rules (needs DATABASE_URL)."""


@alerts_rules.command("list")
@click.option("--workspace", "workspace_id", default=None, help="Only this workspace.")
def alerts_rules_list(workspace_id: str | None) -> None:
    """List rules with their current state."""
    settings = _settings()
    settings.require("DATABASE_URL")

    async def main_():
        async with _alert_store(settings) as store:
            return await store.list_rules(workspace_id)

    from rateguard.alerts.rules import describe
    from rateguard.analytics.report import table

    rows = _run_result(main_())
    click.echo(table(["id", "workspace", "name", "condition", "for", "channels", "state",
                      "value"], [
        [r["id"], r["workspace_id"], r["name"],
         f"{r['metric']}{'@' + r['api_id'] if r['api_id'] else ''} {r['comparator']} "
         f"{describe(r['metric'], r['threshold'])} over {r['window_seconds']}s",
         f"{r['for_seconds']}s", ",".join(r["channel_ids"]) or "-",
         r["state"] if r["enabled"] else "disabled", describe(r["metric"], r["last_value"])]
        for r in rows]))


@alerts_rules.command("create")
@click.option("--workspace", "workspace_id", required=True, help="Workspace id (ws_...).")
@click.option("--name", required=True)
@click.option("--metric", required=True, type=click.Choice(
    ["error_rate", "p95_latency", "p99_latency", "limited_ratio", "request_count"]))
@click.option("--above", "above", type=float, default=None, help="Fire when above this.")
@click.option("--below", "below", type=float, default=None, help="Fire when below this.")
@click.option("--window", "window_seconds", type=int, default=300, show_default=True,
              help="Seconds of traffic the metric is computed over.")
@click.option("--for", "for_seconds", type=int, default=0, show_default=True,
              help="Seconds the condition must hold before firing.")
@click.option("--api", "api_id", default=None, help="Only this API (api_...).")
@click.option("--channel", "channel_ids", multiple=True, help="Channel id (repeatable).")
def alerts_rules_create(workspace_id: str, name: str, metric: str, above: float | None,
                        below: float | None, window_seconds: int, for_seconds: int,
                        api_id: str | None, channel_ids: tuple[str, ...]) -> None:
    """Create a rule, e.g. --metric error_rate --above 0.05 --window 300 --for 60.
    Ratios (error_rate, limited_ratio) are shares from 0 to 1; latency is in ms."""
    if (above is None) == (below is None):
        raise RateGuardError("alerts rules create: give exactly one of --above and --below")
    settings = _settings()
    settings.require("DATABASE_URL")
    from rateguard.db.repository import Actor

    async def main_():
        async with _alert_store(settings) as store:
            await store.repo.get_workspace(workspace_id)
            return await store.create_rule(Actor.cli(), workspace_id, {
                "name": name, "metric": metric,
                "comparator": "above" if above is not None else "below",
                "threshold": above if above is not None else below,
                "window_seconds": window_seconds, "for_seconds": for_seconds,
                "api_id": api_id, "channel_ids": list(channel_ids)})

    made = _run_result(main_())
    click.echo(f"{made['id']} {made['name']}: {made['metric']} {made['comparator']} "
               f"{made['threshold']:g} over {made['window_seconds']}s")


@alerts_rules.command("delete")
@click.argument("rule_id")
def alerts_rules_delete(rule_id: str) -> None:
    """Delete a rule (and its history)."""
    settings = _settings()
    settings.require("DATABASE_URL")
    from rateguard.db.repository import Actor

    async def main_():
        async with _alert_store(settings) as store:
            await store.delete_rule(Actor.cli(), None, rule_id)

    _run_result(main_())
    click.echo(f"{rule_id}: deleted")


@alerts.command("test")
@click.argument("channel_id")
def alerts_test(channel_id: str) -> None:
    """Send a test notification through CHANNEL_ID now; exit code 1 if it failed."""
    settings = _settings()
    settings.require("DATABASE_URL")
    from rateguard.db.repository import Actor

    async def main_():
        async with _alert_store(settings) as store:
            return await store.send_test(Actor.cli(), None, channel_id)

    result = _run_result(main_())
    if result["ok"]:
        click.echo(f"{channel_id}: delivered (status {result['status_code']}, "
                   f"{result['duration_ms']:.0f} ms)")
    else:
        click.echo(f"{channel_id}: failed: {result['error']}", err=True)
        sys.exit(1)


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
    """Create what the running system needs: the PostgreSQL schema (DATABASE_URL), the
    events topic (KAFKA_BROKERS) and the ClickHouse database and tables
    (CLICKHOUSE_URL), whichever are set. Idempotent; safe to run twice at once."""
    settings = _settings()
    if not settings.DATABASE_URL and not settings.KAFKA_BROKERS and not settings.CLICKHOUSE_URL:
        raise RateGuardError("db migrate: set DATABASE_URL, KAFKA_BROKERS and/or CLICKHOUSE_URL")

    async def main_() -> None:
        if settings.DATABASE_URL:
            from rateguard.db.migrate import migrate
            applied = await migrate(settings.DATABASE_URL)
            click.echo(f"postgres: {'applied ' + ', '.join(applied) if applied else 'up to date'}")
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


@db.command("seed")
@click.option("--upstream", default="http://127.0.0.1:8081", show_default=True,
              help="Upstream URL of the demo API (/echo).")
@click.option("--email", default="demo@rateguard.local", show_default=True)
@click.option("--password", default=None, help="Demo password (default: random, printed).")
def db_seed(upstream: str, email: str, password: str | None) -> None:
    """Create a demo user, workspace, policy, API and key (through the same code as the
    management API). Idempotent. Needs DATABASE_URL."""
    settings = _settings()
    settings.require("DATABASE_URL")
    from rateguard.db.seed import seed

    async def main_():
        # the operator names the demo's upstream: only what is never allowed is refused
        from rateguard.net.egress import ALWAYS

        async with _repository(settings, ALWAYS) as repo:
            return await seed(repo, upstream, email=email, password=password)

    demo = _run_result(main_())
    click.echo(f"workspace: {demo.workspace_id}\nlogin:     {demo.email}"
               + (f" / {demo.password}" if demo.password else " (existing account)")
               + f"\napi:       {demo.api['prefix']} -> {demo.api['upstream_url']}"
               + f"\nkey:       {demo.key}")


@main.group(cls=_Group)
def keys() -> None:
    """API keys: in the database (create, list, revoke; needs DATABASE_URL) or for the
    declarative config (new, hash)."""


def _run_result(coro):
    import uvloop

    return uvloop.run(coro)


class _repository:
    """A Repository on a small pool, for one CLI command."""

    def __init__(self, settings: Settings, egress=None) -> None:
        self.settings = settings
        self.egress = egress  # None: the policy for these settings

    async def __aenter__(self):
        from rateguard.db.connection import create_pool
        from rateguard.db.repository import Repository

        self.pool = await create_pool(self.settings.DATABASE_URL, min_size=1, max_size=2)
        from rateguard.net.egress import from_settings

        return Repository(self.pool, _keyring(self.settings),
                          egress=self.egress or from_settings(self.settings))

    async def __aexit__(self, *exc) -> None:
        await self.pool.close()


@keys.command("create")
@click.option("--workspace", "workspace_id", required=True, help="Workspace id (ws_...).")
@click.option("--name", required=True, help="A name to recognise the key by.")
@click.option("--policy", "policy_id", default=None, help="Policy id (pol_...).")
@click.option("--expires-at", default=None, help="ISO 8601 time the key stops working.")
def keys_create(workspace_id: str, name: str, policy_id: str | None,
                expires_at: str | None) -> None:
    """Create a key in a workspace; prints the key once."""
    settings = _settings()
    settings.require("DATABASE_URL")
    from rateguard.db.repository import Actor

    async def main_():
        async with _repository(settings) as repo:
            await repo.get_workspace(workspace_id)
            return await repo.create_key(Actor.cli(), workspace_id, {
                "name": name, "policy_id": policy_id, "expires_at": expires_at})

    made = _run_result(main_())
    click.echo(f"id:  {made['id']}\nkey: {made['key']}\n(shown once; only its SHA-256 is stored)")


@keys.command("list")
@click.option("--workspace", "workspace_id", required=True, help="Workspace id (ws_...).")
def keys_list(workspace_id: str) -> None:
    """List the keys of a workspace (never the keys themselves)."""
    settings = _settings()
    settings.require("DATABASE_URL")

    async def main_():
        async with _repository(settings) as repo:
            await repo.get_workspace(workspace_id)
            return await repo.list_keys(workspace_id)

    rows = _run_result(main_())
    from rateguard.analytics.report import table

    click.echo(table(["id", "name", "key", "status", "policy", "expires", "last used"], [
        [k["id"], k["name"], f"{k['prefix']}...{k['last_four']}", k["status"],
         k["policy_id"] or "-", _when(k["expires_at"]), _when(k["last_used_at"])]
        for k in rows]))


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id: every proxy answers 401 for it within two seconds."""
    settings = _settings()
    settings.require("DATABASE_URL")
    from rateguard.db.errors import NotFound
    from rateguard.db.repository import Actor

    async def main_():
        async with _repository(settings) as repo:
            workspace_id = await repo.pool.fetchval(
                "SELECT workspace_id FROM api_keys WHERE id = $1", key_id)
            if workspace_id is None:
                raise NotFound(f"key {key_id} not found")
            return await repo.revoke_key(Actor.cli(), workspace_id, key_id)

    revoked = _run_result(main_())
    click.echo(f"{revoked['id']} ({revoked['name']}): revoked")


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


@main.group(cls=_Group)
def users() -> None:
    """Dashboard and management API accounts (needs DATABASE_URL)."""


@users.command("create")
@click.option("--email", required=True)
@click.option("--name", default="", help="Display name.")
@click.option("--password", default=None,
              help="Password (default: read from the RATEGUARD_PASSWORD variable or prompted).")
@click.option("--workspace", "workspace_id", default=None,
              help="Add to this workspace id, or 'new' for a workspace they own.")
@click.option("--role", type=click.Choice(["owner", "admin", "viewer"]), default="viewer",
              show_default=True, help="Role in --workspace.")
def users_create(email: str, name: str, password: str | None, workspace_id: str | None,
                 role: str) -> None:
    """Create a user (argon2id-hashed password)."""
    import os

    settings = _settings()
    settings.require("DATABASE_URL")
    from rateguard.db import validate

    password = password or os.environ.get("RATEGUARD_PASSWORD") or click.prompt(
        "Password", hide_input=True, confirmation_prompt=True)
    body = {"email": email, "password": password}
    email, password = validate.email(body), validate.password(body)

    async def main_():
        async with _repository(settings) as repo:
            return await repo.create_user(email, password, name, workspace_id, role)

    user = _run_result(main_())
    where = f" in {user['workspace']['id']} as {user['workspace']['role']}" \
        if "workspace" in user else ""
    click.echo(f"{user['id']} {user['email']}{where}")


def _user_command(email: str, action):
    """Run ``action(repo, user)`` for the user with ``email``; returns its result."""
    settings = _settings()
    settings.require("DATABASE_URL")

    async def main_():
        async with _repository(settings) as repo:
            return await action(repo, await repo.user_by_email(email))

    return _run_result(main_())


@users.command("reset-password")
@click.argument("email")
@click.option("--stdin", "from_stdin", is_flag=True,
              help="Read the new password from standard input (one line) and set it now, "
                   "instead of printing a reset link.")
@click.option("--url", "base_url", default="http://localhost:3000", show_default=True,
              help="The dashboard's address, for the link.")
def users_reset_password(email: str, from_stdin: bool, base_url: str) -> None:
    """Reset a user's password. By default prints a one-time link (valid 1 hour; an
    earlier link stops working) that the user opens to choose a new password. With
    --stdin, sets the password read from standard input. Either way every session of the
    user ends when the password changes."""
    from urllib.parse import quote

    from rateguard.db import validate
    from rateguard.db.repository import Actor

    password = None
    if from_stdin:
        password = validate.password({"password": sys.stdin.readline().rstrip("\r\n")})

    async def action(repo, user):
        if password is not None:
            return await repo.set_password(Actor.cli(), user["id"], password)
        return await repo.create_password_reset(Actor.cli(), user["id"])

    result = _user_command(email, action)
    if password is not None:
        click.echo(f"{email}: password set; {result} session(s) ended")
        return
    link = f"{base_url.rstrip('/')}/reset-password?token={quote(result['token'])}"
    click.echo(f"{link}\n(one-time link for {email}, valid until "
               f"{_when(result['expires_at'])} UTC; send it to them privately)")


@users.command("disable")
@click.argument("email")
def users_disable(email: str) -> None:
    """Disable a user: sign-in is refused and every session (API tokens and dashboard
    cookies) stops working at once."""
    from rateguard.db.repository import Actor

    async def action(repo, user):
        return await repo.set_disabled(Actor.cli(), user["id"], True)

    user = _user_command(email, action)
    click.echo(f"{user['id']} {user['email']}: disabled")


@users.command("enable")
@click.argument("email")
def users_enable(email: str) -> None:
    """Enable a disabled user again (they sign in with their password)."""
    from rateguard.db.repository import Actor

    async def action(repo, user):
        return await repo.set_disabled(Actor.cli(), user["id"], False)

    user = _user_command(email, action)
    click.echo(f"{user['id']} {user['email']}: enabled")


@users.command("sessions")
@click.argument("email")
@click.option("--end", is_flag=True, help="End every session of the user (sign them out "
                                          "everywhere).")
def users_sessions(email: str, end: bool) -> None:
    """List a user's active sessions, or end them all with --end."""
    async def action(repo, user):
        if end:
            return await repo.end_all_sessions(user["id"], "ended_by_operator")
        return await repo.list_sessions(user["id"])

    result = _user_command(email, action)
    if end:
        click.echo(f"{email}: {result} session(s) ended")
        return
    from rateguard.analytics.report import table

    click.echo(table(["id", "created", "last refresh", "address", "user agent"], [
        [r["id"], _when(r["created_at"]), _when(r["last_used_at"]), r["client_ip"] or "-",
         (r["user_agent"] or "-")[:40]] for r in result]))


@users.command("list")
def users_list() -> None:
    """Every user: status, operator flag, active sessions."""
    settings = _settings()
    settings.require("DATABASE_URL")

    async def main_():
        async with _repository(settings) as repo:
            return await repo.list_users(limit=100_000)

    from rateguard.analytics.report import table

    click.echo(table(["id", "email", "status", "operator", "sessions", "created"], [
        [u["id"], u["email"], "disabled" if u["disabled_at"] else "active",
         "yes" if u["operator"] else "-", str(u["sessions"]), _when(u["created_at"])]
        for u in _run_result(main_())]))


@users.command("operator")
@click.argument("email")
@click.option("--revoke", is_flag=True, help="Take the operator role away.")
def users_operator(email: str, revoke: bool) -> None:
    """Make a user an instance operator: they can list, disable and enable users in the
    API and the dashboard (/users)."""
    from rateguard.db.repository import Actor

    async def action(repo, user):
        return await repo.set_operator(Actor.cli(), user["id"], not revoke)

    user = _user_command(email, action)
    click.echo(f"{user['id']} {user['email']}: " + ("operator" if user["operator"]
                                                     else "not an operator"))


@main.group(cls=_Group)
def hosts() -> None:
    """Route ownership (needs DATABASE_URL): which workspace routes on which host.

    A host belongs to one workspace: only its APIs route on it, and requests for it
    never reach another workspace's any-host APIs. '*' stands for the any-host routes:
    assigned, only that workspace may create them; unassigned (the default), workspaces
    share them and none may take a prefix equal to, inside or above another's."""


@hosts.command("assign")
@click.argument("host")
@click.argument("workspace_id")
def hosts_assign(host: str, workspace_id: str) -> None:
    """Give HOST ('*': the any-host routes) to WORKSPACE_ID. Refused while APIs of
    another workspace route on it."""
    settings = _settings()
    settings.require("DATABASE_URL")
    from rateguard.db.repository import Actor

    async def main_():
        async with _repository(settings) as repo:
            return await repo.assign_host(Actor.cli(), host, workspace_id)

    row = _run_result(main_())
    click.echo(f"{row['host']} -> {row['workspace_id']}")


@hosts.command("unassign")
@click.argument("host")
def hosts_unassign(host: str) -> None:
    """Take HOST back: its APIs stay but stop routing until it is assigned again
    ('*': the any-host routes are shared again)."""
    settings = _settings()
    settings.require("DATABASE_URL")
    from rateguard.db.repository import Actor

    async def main_():
        async with _repository(settings) as repo:
            await repo.unassign_host(Actor.cli(), host)

    _run_result(main_())
    click.echo(f"{host.strip().lower()}: unassigned")


@hosts.command("list")
def hosts_list() -> None:
    """Every assigned host and its workspace."""
    settings = _settings()
    settings.require("DATABASE_URL")

    async def main_():
        async with _repository(settings) as repo:
            return await repo.list_hosts()

    rows = _run_result(main_())
    from rateguard.analytics.report import table

    click.echo(table(["host", "workspace", "assigned"], [
        [r["host"], r["workspace_id"], _when(r["assigned_at"])] for r in rows]))


@main.group(cls=_Group)
def secrets() -> None:
    """Secrets at rest (ENCRYPTION_KEY)."""


@secrets.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret under the first key of ENCRYPTION_KEY.

    Rotation: set ENCRYPTION_KEY=NEW,OLD everywhere, run this, then set
    ENCRYPTION_KEY=NEW. `rateguard secrets new-key` prints a new key."""
    settings = _settings()
    settings.require("DATABASE_URL", "ENCRYPTION_KEY")

    async def main_():
        async with _repository(settings) as repo:
            return await repo.rotate_secrets(), repo.keyring.primary_id

    count, primary = _run_result(main_())
    click.echo(f"re-encrypted {count} secret(s) under key id {primary}")


@secrets.command("new-key")
def secrets_new_key() -> None:
    """Print a new random ENCRYPTION_KEY."""
    from rateguard.crypto import generate_key

    click.echo(generate_key())


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".rateguard"), show_default=True,
              help="Where the embedded servers keep their data.")
@click.option("--proxy-port", default=3001, show_default=True, type=int)
@click.option("--metrics-port", default=9090, show_default=True, type=int)
@click.option("--web-port", default=3000, show_default=True, type=int,
              help="Dashboard and management API (/api/v1).")
def up(data_dir: Path, proxy_port: int, metrics_port: int, web_port: int) -> None:
    """Run the whole system on this machine.

    Any of DATABASE_URL, REDIS_URL, KAFKA_BROKERS and CLICKHOUSE_URL that is not set is
    replaced by an embedded server (PostgreSQL, Valkey, a Tansu broker, chdb), so no
    setting is needed. Migrates PostgreSQL, seeds a demo workspace (API, policy, key,
    login), runs the dashboard and management API on --web-port and prints a curl line
    that works.
    """
    from rateguard.up import run_up

    Settings.from_env()  # a malformed variable stops us before anything starts
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    run_up(data_dir, proxy_port, metrics_port, web_port)


main.help = inspect.cleandoc(main.help or "") + "\n\nEnvironment variables:\n\n\b\n" + _env_table()
