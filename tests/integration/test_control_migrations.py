"""`rateguard db migrate` on PostgreSQL: idempotent, one transaction, safe when several
run at once (advisory lock)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from rateguard.db import migrate as migrate_module
from rateguard.db.migrate import migrate, migrations, pending

pytestmark = pytest.mark.integration

TABLES = {"users", "workspaces", "memberships", "invitations", "sessions", "policies", "apis",
          "api_keys", "audit_log", "notification_channels", "alert_rules", "alert_state",
          "schema_migrations"}
ALL = [version for version, _ in migrations()]


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}
    finally:
        await conn.close()


async def test_migrate_twice_applies_once(new_database):
    url = await new_database()
    assert await pending(url) == ALL
    assert await migrate(url) == ALL
    assert await migrate(url) == []
    assert await pending(url) == []
    assert TABLES <= await tables(url)


async def test_concurrent_migrations_apply_each_file_once(new_database):
    url = await new_database()
    results = await asyncio.gather(*(migrate(url) for _ in range(4)))
    assert sorted(results, key=len) == [[], [], [], ALL]
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL)
    finally:
        await conn.close()


async def test_two_cli_migrations_at_once(new_database):
    url = await new_database()
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BROKERS", "CLICKHOUSE_URL")}
    env["DATABASE_URL"] = url
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rateguard", "db", "migrate", env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [await proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    lines = sorted(out.decode().strip() for out, _ in outputs)
    assert lines == [f"postgres: applied {', '.join(ALL)}", "postgres: up to date"]


async def test_a_failing_migration_leaves_nothing_behind(new_database, monkeypatch):
    url = await new_database()
    broken = migrations() + [("9999_broken", "CREATE TABLE half_done (id int);\n"
                                             "SELECT no_such_function();")]
    monkeypatch.setattr(migrate_module, "migrations", lambda: broken)
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(url)
    assert await tables(url) == set()  # the whole run rolled back, even 0001
    monkeypatch.setattr(migrate_module, "migrations", migrations)
    assert await migrate(url) == ALL
