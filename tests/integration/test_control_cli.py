"""The operator's commands against a real PostgreSQL: users create, keys
create|list|revoke, db seed, secrets rotate, and the one-line errors of web and proxy."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import asyncpg
import pytest
import pytest_asyncio

from rateguard.crypto import KeyRing, generate_key
from rateguard.db.migrate import migrate
from rateguard.snapshot.pg_source import PgSource
from rateguard.errors import ConfigError

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "ENCRYPTION_KEY", "JWT_SECRET", "KAFKA_BROKERS",
                          "CLICKHOUSE_URL", "REDIS_URL")}
    return subprocess.run([sys.executable, "-m", "rateguard", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest_asyncio.fixture(scope="module")
async def database(new_database):
    url = await new_database()
    await migrate(url)
    return url


@pytest.fixture(scope="module")
def owner(database):
    result = cli("users", "create", "--email", "ops@example.com", "--name", "Ops",
                 "--workspace", "new", "--password", "operator password",
                 env={"DATABASE_URL": database})
    assert result.returncode == 0, result.stderr
    match = re.match(r"^(usr_\w+) ops@example.com in (ws_\w+) as owner$", result.stdout.strip())
    assert match, result.stdout
    return {"user": match[1], "workspace": match[2]}


def test_keys_create_list_revoke(database, owner):
    env = {"DATABASE_URL": database}
    made = cli("keys", "create", "--workspace", owner["workspace"], "--name", "ci", env=env)
    assert made.returncode == 0, made.stderr
    key_id = re.search(r"^id:\s+(key_\w+)$", made.stdout, re.M)[1]
    key = re.search(r"^key: (rg_\S+)$", made.stdout, re.M)[1]
    listed = cli("keys", "list", "--workspace", owner["workspace"], env=env)
    assert listed.returncode == 0
    assert f"{key[:8]}...{key[-4:]}" in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout
    revoked = cli("keys", "revoke", key_id, env=env)
    assert (revoked.returncode, revoked.stdout.strip()) == (0, f"{key_id} (ci): revoked")
    assert "revoked" in cli("keys", "list", "--workspace", owner["workspace"], env=env).stdout


def test_cli_errors_are_one_line(database, owner):
    env = {"DATABASE_URL": database}
    for args, expected in (
            (("keys", "revoke", "key_missing"), "error: key key_missing not found"),
            (("keys", "create", "--workspace", "ws_missing", "--name", "x"),
             "error: workspace not found"),
            (("keys", "create", "--workspace", owner["workspace"], "--name", "x",
              "--expires-at", "2001-01-01"), "error: expires_at: must be in the future"),
            (("users", "create", "--email", "ops@example.com", "--password", "long enough"),
             "error: email: an account with this email already exists"),
            (("users", "create", "--email", "nope", "--password", "long enough"),
             "error: email: is not an email address")):
        result = cli(*args, env=env)
        assert (result.returncode, result.stderr.strip()) == (2, expected), args
    result = cli("keys", "list", "--workspace", "x", env={})
    assert result.stderr.startswith("error: DATABASE_URL: not set")
    result = cli("web", env={"DATABASE_URL": database})
    assert (result.returncode, result.stderr.strip().split(";")[0]) == (
        2, "error: JWT_SECRET: not set")
    result = cli("web", env={"DATABASE_URL": database, "JWT_SECRET": "x" * 40,
                             "ENCRYPTION_KEY": "short"})
    assert result.stderr.startswith("error: ENCRYPTION_KEY:") and result.stderr.count("\n") == 1


async def test_proxy_on_an_unmigrated_database_says_so(new_database, redis_url):
    url = await new_database()
    result = cli("proxy", "--no-events", env={"DATABASE_URL": url, "REDIS_URL": redis_url})
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: DATABASE_URL: the schema is missing; "
                                     "run `rateguard db migrate` first")


def test_seed_is_idempotent(database):
    env = {"DATABASE_URL": database}
    first = cli("db", "seed", "--upstream", "http://127.0.0.1:9", env=env)
    assert first.returncode == 0, first.stderr
    assert re.search(r"^login:\s+demo@rateguard.local / \S+$", first.stdout, re.M)
    second = cli("db", "seed", "--upstream", "http://127.0.0.1:10", env=env)
    assert second.returncode == 0 and "(existing account)" in second.stdout
    assert "/echo -> http://127.0.0.1:10" in second.stdout


async def test_secrets_rotate_re_encrypts_under_the_new_key(database, owner):
    old, new = generate_key(), generate_key()
    from rateguard.db.connection import create_pool
    from rateguard.db.repository import Actor, Repository

    pool = await create_pool(database)
    try:
        repo = Repository(pool, KeyRing(old))
        api = await repo.create_api(Actor.cli(), owner["workspace"], {
            "name": "creds", "prefix": "/creds", "upstream_url": "http://127.0.0.1:1",
            "upstream_headers": {"Authorization": "Bearer upstream-token"}})
    finally:
        await pool.close()
    with pytest.raises(ConfigError, match="does not hold"):
        await PgSource(database, KeyRing(new)).load()

    result = cli("secrets", "rotate", env={"DATABASE_URL": database,
                                           "ENCRYPTION_KEY": f"{new},{old}"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"re-encrypted 1 secret(s) under key id "
                                     f"{KeyRing(new).primary_id}")
    conn = await asyncpg.connect(database)
    try:
        stored = await conn.fetchval("SELECT upstream_headers->>'Authorization' FROM apis"
                                     " WHERE id = $1", api["id"])
    finally:
        await conn.close()
    assert stored.startswith(f"v1:{KeyRing(new).primary_id}:")
    snapshot = await PgSource(database, KeyRing(new)).load()
    creds = next(a for a in snapshot.apis if a.id == api["id"])
    assert creds.upstream_headers == ((b"Authorization", b"Bearer upstream-token"),)
    again = cli("secrets", "rotate", env={"DATABASE_URL": database, "ENCRYPTION_KEY": new})
    assert again.stdout.strip().startswith("re-encrypted 0 secret(s)")
