"""The control-plane web application: management API, probes, and its background job.

``build_app`` takes plain arguments (a DSN, secrets, an optional ClickHouse) so the same
app runs under `rateguard web`, inside `rateguard up` (sharing the process that owns
the embedded chdb engine) and in the tests.

last_used_at: the proxy never writes to PostgreSQL. Every request it serves already
becomes an event in ClickHouse, so a job here reads, every ``usage_interval`` seconds,
the latest event time per key since its last pass and moves ``api_keys.last_used_at``
forward (never back). It is idempotent, so running it in every web replica is safe;
the value lags real use by at most the interval plus the analytics pipeline's delay.

PostgreSQL down: every query goes through the bounded pool (db/connection.py), whose
failures come out as DatabaseUnavailable; ``database_middleware`` answers those with
503, ``Retry-After`` and a body naming the database (JSON under /api and the probes, the
error page elsewhere) instead of a 500, and logs the outage once per
``UNAVAILABLE_LOG_SECONDS`` rather than once per request.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from datetime import datetime, timezone
from functools import partial

from aiohttp import web

from rateguard.crypto import KeyRing
from rateguard.db.connection import create_pool
from rateguard.db.errors import DatabaseUnavailable
from rateguard.db.repository import Repository
from rateguard.net.egress import ALWAYS, EgressPolicy, from_settings
from rateguard.web.api.accounts import SIGNUP_MODE
from rateguard.web.api.registry import (
    CLICKHOUSE, CLICKHOUSE_DB, REPO, TOKENS, add_routes, error_response, errors_middleware,
)
from rateguard.web.auth import Tokens
from rateguard.web.throttle import throttle_ctx

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
UNAVAILABLE_LOG_SECONDS = 10.0


class _OutageLog:
    """One warning per interval while the database is unreachable, with a count."""

    def __init__(self) -> None:
        self.last = 0.0
        self.suppressed = 0

    def note(self, request: web.Request, exc: DatabaseUnavailable) -> None:
        now = time.monotonic()
        if now - self.last < UNAVAILABLE_LOG_SECONDS:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more requests answered 503 since the last line)" \
            if self.suppressed else ""
        log.warning("%s %s: 503, PostgreSQL unavailable (%s)%s", request.method, request.path,
                    exc.detail, more)
        self.last, self.suppressed = now, 0


_OUTAGES = _OutageLog()


@web.middleware
async def database_middleware(request: web.Request, handler) -> web.StreamResponse:
    """PostgreSQL unreachable: 503 with Retry-After, never a 500 or a hang."""
    try:
        return await handler(request)
    except DatabaseUnavailable as exc:
        _OUTAGES.note(request, exc)
        headers = {"Retry-After": str(exc.retry_after)}
        if request.path.startswith("/api/") or request.path in ("/healthz", "/readyz"):
            return error_response(exc.status, exc.code, exc.message, headers=headers)
        from rateguard.web.pages.views import error_page

        response = error_page(request, exc.status, "Database unavailable",
                              "The dashboard cannot reach its database (PostgreSQL) right "
                              f"now. Try again in {exc.retry_after} seconds.")
        response.headers.update(headers)
        return response


class UsageJob:
    """Copies each key's latest use from ClickHouse events to api_keys.last_used_at."""

    def __init__(self, repo: Repository, clickhouse, database: str,
                 interval: float = 30.0, lookback_seconds: int = 86400) -> None:
        self.repo = repo
        self.clickhouse = clickhouse
        self.database = database
        self.interval = interval
        self.since_ms = int((time.time() - lookback_seconds) * 1000)
        self.passes = 0

    async def run_once(self) -> int:
        # Look back a little before the last pass: events arrive a few seconds late.
        started_ms = int(time.time() * 1000)
        _cols, rows = await self.clickhouse.query(
            f"SELECT key_id, toUnixTimestamp64Milli(max(ts)) FROM {self.database}.api_events"
            " WHERE ts >= fromUnixTimestamp64Milli({since:Int64}) AND key_id != ''"
            " AND decision IN ('allowed', 'limited', 'shadow_limited') GROUP BY key_id",
            {"since": self.since_ms})
        used = [(key_id, datetime.fromtimestamp(int(ms) / 1000, timezone.utc))
                for key_id, ms in rows]
        updated = await self.repo.record_last_used(used)
        self.since_ms = started_ms - 120_000
        self.passes += 1
        return updated

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("last-used job: %s", exc)
            await asyncio.sleep(self.interval)


USAGE = web.AppKey("usage", UsageJob)


def client_address_middleware(trusted: tuple):
    """Behind a load balancer or ingress (TRUSTED_PROXIES), ``request.remote`` becomes
    the client's address as the proxy computes it (the right-most X-Forwarded-For hop
    that is not a trusted proxy), so the sign-in and signup throttles, the sessions list
    and the logs count clients, not the ingress. From any other peer the header is
    ignored: a caller cannot choose the address it is counted under."""
    from rateguard.proxy.client_address import client_address

    @web.middleware
    async def middleware(request: web.Request, handler):
        forwarded = request.headers.get("X-Forwarded-For")
        peer = request.remote or ""
        if forwarded:
            address = client_address(peer, forwarded.encode("latin-1", "replace"), trusted)
            if address != peer:
                request = request.clone(remote=address)
        return await handler(request)
    return middleware


def build_app(database_url: str, jwt_secret: str, *, encryption_key: str | None = None,
              clickhouse=None, clickhouse_database: str = "rateguard",
              usage_interval: float = 30.0, access_ttl: int | None = None,
              secure_cookies: bool = False, redis_url: str | None = None,
              redis_cluster: bool = False,
              login_limits: tuple[str, str] = ("30/min", "10/min"),
              egress: EgressPolicy = ALWAYS, signup: str = "open",
              signup_limit: str | None = None,
              trusted_proxies: tuple = ()) -> web.Application:
    middlewares = [errors_middleware, database_middleware]
    if trusted_proxies:
        middlewares.insert(0, client_address_middleware(trusted_proxies))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[TOKENS] = Tokens(jwt_secret, **({"ttl": access_ttl} if access_ttl else {}))
    app[CLICKHOUSE_DB] = clickhouse_database
    app[SIGNUP_MODE] = signup  # open | invite | closed (SIGNUP)
    if clickhouse is not None:
        app[CLICKHOUSE] = clickhouse
    keyring = KeyRing(encryption_key) if encryption_key else None

    async def database(app: web.Application):
        pool = await create_pool(database_url)
        app[REPO] = Repository(pool, keyring, egress=egress)
        yield
        await pool.close()

    async def usage(app: web.Application):
        task = None
        if clickhouse is not None:
            job = UsageJob(app[REPO], clickhouse, clickhouse_database, usage_interval)
            app[USAGE] = job
            task = asyncio.ensure_future(job.run())
        yield
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(usage)
    app.cleanup_ctx.append(partial(throttle_ctx, redis_url=redis_url, cluster=redis_cluster,
                                   per_ip=login_limits[0], per_email=login_limits[1],
                                   signup_per_ip=signup_limit))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(request.app[REPO].pool.fetchval("SELECT 1"), 2)
        except DatabaseUnavailable as exc:
            return error_response(503, "not_ready", "PostgreSQL: " + type(exc.__cause__).__name__)
        except Exception as exc:
            return error_response(503, "not_ready", f"PostgreSQL: {type(exc).__name__}")
        return web.json_response({"ready": True, "postgres": "up",
                                  "analytics": clickhouse is not None})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_routes(app)
    # The dashboard (rateguard/web/pages): HTML pages and /static on the same port.
    from rateguard.web.pages import setup_pages
    setup_pages(app, jwt_secret, secure_cookies=secure_cookies)
    return app



async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    from rateguard.web.server import JsonErrorsRunner  # unparseable requests get JSON 400s

    runner = JsonErrorsRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve(settings, host: str, port: int) -> None:
    """`rateguard web`: run until SIGTERM/SIGINT."""
    from rateguard.analytics.clickhouse import ClickHouse

    clickhouse = None
    if settings.CLICKHOUSE_URL:
        clickhouse = ClickHouse(settings.CLICKHOUSE_URL, settings.CLICKHOUSE_DATABASE,
                                settings.ANALYTICS_TTL_DAYS)
    app = build_app(settings.DATABASE_URL, settings.JWT_SECRET,
                    encryption_key=settings.ENCRYPTION_KEY, clickhouse=clickhouse,
                    clickhouse_database=settings.CLICKHOUSE_DATABASE,
                    secure_cookies=settings.production, redis_url=settings.REDIS_URL,
                    redis_cluster=settings.redis_cluster,
                    login_limits=(settings.LOGIN_RATE_LIMIT_IP, settings.LOGIN_RATE_LIMIT_EMAIL),
                    egress=from_settings(settings), signup=settings.signup_mode,
                    signup_limit=settings.SIGNUP_RATE_LIMIT_IP,
                    trusted_proxies=settings.TRUSTED_PROXIES)
    runner = await start(app, host, port)
    log.info("web: dashboard on http://%s:%d/, management API on /api/v1", host, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if clickhouse is not None:
            await clickhouse.close()
