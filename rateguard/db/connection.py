"""asyncpg connections with JSON codecs, and the NOTIFY channel the proxies listen on.

The control plane's pool is bounded in time everywhere, so a request never hangs on a
PostgreSQL that is down or stuck: getting a connection (from the pool, or a new one)
takes at most ``ACQUIRE_TIMEOUT`` seconds, each command at most ``COMMAND_TIMEOUT``, and
handing back a connection whose command timed out at most ``ACQUIRE_TIMEOUT`` again
(asyncpg's release budget; past it the connection is dropped).
Every failure to reach the server comes out as ``DatabaseUnavailable`` (503 with
Retry-After in the web app). The pool needs no restart afterwards: asyncpg replaces a
closed connection on the next acquire, so the first request after PostgreSQL returns
succeeds.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import asyncpg
import orjson

from rateguard.db.errors import DatabaseUnavailable, is_unavailable
from rateguard.errors import RateGuardError

CHANNEL = "rateguard_config"

CONNECT_TIMEOUT = 5.0
ACQUIRE_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0


async def _init(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, schema="pg_catalog", format="text",
                                  encoder=lambda v: orjson.dumps(v).decode(),
                                  decoder=orjson.loads)


async def connect(dsn: str) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise RateGuardError(f"DATABASE_URL: cannot connect to PostgreSQL ({exc})") from None
    await _init(conn)
    return conn


class GuardedPool:
    """An asyncpg pool whose acquire and queries raise DatabaseUnavailable when the
    server cannot be reached, within ACQUIRE_TIMEOUT + COMMAND_TIMEOUT per command.
    Anything else (a constraint, a bug) passes through unchanged."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float = ACQUIRE_TIMEOUT) -> None:
        self._pool = pool
        self.acquire_timeout = acquire_timeout

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self._pool.acquire(timeout=self.acquire_timeout) as conn:
                yield conn
        except Exception as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable(exc) from exc
            raise

    async def execute(self, query: str, *args, **kw):
        async with self.acquire() as conn:
            return await conn.execute(query, *args, **kw)

    async def fetch(self, query: str, *args, **kw):
        async with self.acquire() as conn:
            return await conn.fetch(query, *args, **kw)

    async def fetchrow(self, query: str, *args, **kw):
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args, **kw)

    async def fetchval(self, query: str, *args, **kw):
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args, **kw)

    def __getattr__(self, name: str):
        return getattr(self._pool, name)  # close(), terminate(), get_size() ...


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10, *,
                      acquire_timeout: float | None = None,
                      command_timeout: float | None = None) -> GuardedPool:
    """A GuardedPool; the timeouts default to this module's constants, read at call
    time (the fault tests shorten them)."""
    acquire_timeout = ACQUIRE_TIMEOUT if acquire_timeout is None else acquire_timeout
    command_timeout = COMMAND_TIMEOUT if command_timeout is None else command_timeout
    try:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                         init=_init, timeout=CONNECT_TIMEOUT,
                                         command_timeout=command_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise RateGuardError(f"DATABASE_URL: cannot connect to PostgreSQL ({exc})") from None
    return GuardedPool(pool, acquire_timeout)
