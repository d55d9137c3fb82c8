"""Apply the numbered SQL files in migrations/ that the database has not seen yet.

Everything runs in one transaction under a transaction-scoped advisory lock: two
`rateguard db migrate` at once (two Job pods, a rollout racing an operator) serialize,
and the second finds nothing left to do. A failing file rolls back the whole run.
Each applied file is recorded in schema_migrations with its checksum; a recorded file
whose text changed since is reported, never re-applied.

PostgreSQL going away mid-run (a restart, a failover) rolls the open transaction back
on the server: nothing of this run is applied. The command says so in one line and
asks to be run again; tests/faults/test_postgres_down.py kills the server mid-run.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources

from rateguard.db.connection import connect
from rateguard.db.errors import is_unavailable
from rateguard.errors import RateGuardError

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key: "rg-migrate" as a number, shared by every migrator.
LOCK_ID = int.from_bytes(hashlib.sha256(b"rateguard migrate").digest()[:8], "big") >> 1


def migrations() -> list[tuple[str, str]]:
    """(version, sql) for every file in migrations/, in order of their numbers."""
    folder = resources.files("rateguard.db").joinpath("migrations")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text()) for name in names]


async def migrate(dsn: str) -> list[str]:
    """Apply the missing migrations; return the versions applied by this call."""
    conn = await connect(dsn)
    applied_now: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r["version"]: r["checksum"]
                    for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")}
            for version, sql in migrations():
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version] != checksum:
                        log.warning("migration %s changed after it was applied; "
                                    "add a new migration instead", version)
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    version, checksum)
                applied_now.append(version)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        raise RateGuardError(
            f"DATABASE_URL: PostgreSQL went away during the migration ({type(exc).__name__}:"
            f" {exc}); nothing of this run was applied (it is one transaction): run "
            "`rateguard db migrate` again once PostgreSQL is back") from None
    finally:
        await _close(conn)
    return applied_now


async def _close(conn) -> None:
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=5)
    except Exception:
        conn.terminate()


async def pending(dsn: str) -> list[str]:
    """Versions not applied yet (for readiness checks)."""
    conn = await connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        done = set()
        if exists:
            done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    finally:
        await conn.close()
    return [version for version, _ in migrations() if version not in done]
