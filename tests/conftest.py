"""Session-scoped real servers, started once: Valkey, the Kafka-protocol broker and
ClickHouse (chdb in this process), or the servers the environment names."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from rateguard.embedded.servers import EmbeddedBroker, EmbeddedValkey
from tests.servers import Upstream


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="rateguard-tests-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def redis_url(workdir):
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = EmbeddedValkey(workdir)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def kafka_brokers(workdir):
    if os.environ.get("KAFKA_BROKERS"):
        yield os.environ["KAFKA_BROKERS"]
        return
    broker = EmbeddedBroker()
    yield broker.start()
    broker.stop()


@pytest.fixture(scope="session")
def clickhouse_url(workdir):
    if os.environ.get("CLICKHOUSE_URL"):
        return os.environ["CLICKHOUSE_URL"]
    path = workdir / "clickhouse"
    path.mkdir()
    return f"chdb://{path}"


@pytest_asyncio.fixture(scope="session")
async def upstream():
    """The test upstream (tests/servers.py), one for the session."""
    server = Upstream()
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="session")
async def session():
    """An HTTP client for the session (bodies as sent: no decompression)."""
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        yield client


@pytest.fixture(scope="session")
def topic():
    return f"api-events-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def clickhouse_db():
    return f"rg_test_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def postgres_url(workdir):
    """A PostgreSQL server: DATABASE_URL, or an embedded one. Tests make their own
    databases on it (see ``new_database``)."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    from rateguard.embedded.servers import EmbeddedPostgres

    server = EmbeddedPostgres(workdir)
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def new_database(postgres_url):
    """new_database() -> the URL of a fresh, empty database on the test server."""
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    async def make() -> str:
        name = f"rg_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        return urlunsplit(urlsplit(postgres_url)._replace(path="/" + name))

    return make
