"""asyncpg connections with JSON codecs, and the NOTIFY channel the proxies listen on."""

from __future__ import annotations

import asyncpg
import orjson

from rateguard.errors import RateGuardError

CHANNEL = "rateguard_config"


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


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                         init=_init, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise RateGuardError(f"DATABASE_URL: cannot connect to PostgreSQL ({exc})") from None
