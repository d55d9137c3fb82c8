"""ClickHouse access for analytics: connection, schema, inserts and read queries.

Works with a server (``http(s)://host:8123``) and the embedded engine
(``chdb:///path``) through clickhouse-connect. clickhouse-connect's client blocks and
chdb allows one engine per process, so every call runs on one dedicated thread.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from string import Template
from urllib.parse import urlsplit

from rateguard.events.schema import FIELDS

log = logging.getLogger(__name__)

COLUMNS = (*FIELDS, "kafka_partition", "kafka_offset")


def _schema_statements(database: str, ttl_days: int) -> list[str]:
    folder = resources.files("rateguard.analytics").joinpath("sql")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [Template(folder.joinpath(name).read_text()).substitute(db=database, ttl_days=ttl_days)
            for name in names]


def connect(url: str):
    """A clickhouse-connect client for a server URL or ``chdb:///path``."""
    import clickhouse_connect

    if url.startswith("chdb://"):
        return clickhouse_connect.get_client(dsn=url)
    parts = urlsplit(url)
    return clickhouse_connect.get_client(
        host=parts.hostname, port=parts.port or (8443 if parts.scheme == "https" else 8123),
        username=parts.username or "default", password=parts.password or "",
        secure=parts.scheme == "https", connect_timeout=5, send_receive_timeout=30)


class ClickHouse:
    def __init__(self, url: str, database: str, ttl_days: int = 90) -> None:
        self.url = url
        self.database = database
        self.ttl_days = ttl_days
        self._client = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    async def _call(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _client_sync(self):
        if self._client is None:
            self._client = connect(self.url)
        return self._client

    def _setup_sync(self) -> None:
        client = self._client_sync()
        client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        for statement in _schema_statements(self.database, self.ttl_days):
            client.command(statement)

    async def setup(self) -> None:
        """Create the database, tables and views if missing."""
        await self._call(self._setup_sync)

    async def insert(self, rows: list[tuple]) -> None:
        def run() -> None:
            self._client_sync().insert(f"{self.database}.api_events", rows, column_names=COLUMNS)
        await self._call(run)

    async def stored_offsets(self) -> dict[int, int]:
        """The highest Kafka offset stored per partition."""
        def run():
            result = self._client_sync().query(
                f"SELECT kafka_partition, max(kafka_offset) FROM {self.database}.api_events "
                "GROUP BY kafka_partition")
            return {int(p): int(o) for p, o in result.result_rows}
        return await self._call(run)

    async def ids_at(self, partition: int, offset: int) -> set[str]:
        """The event ids stored from one Kafka record (partition, offset)."""
        def run():
            result = self._client_sync().query(
                f"SELECT id FROM {self.database}.api_events WHERE kafka_partition = "
                "{p:UInt32} AND kafka_offset = {o:UInt64}",
                parameters={"p": partition, "o": offset})
            return {row[0] for row in result.result_rows}
        return await self._call(run)

    async def query(self, sql: str, parameters: dict | None = None) -> tuple[list[str], list]:
        def run():
            result = self._client_sync().query(sql, parameters=parameters or {})
            return list(result.column_names), [list(row) for row in result.result_rows]
        return await self._call(run)

    async def ping(self) -> bool:
        try:
            await self.query("SELECT 1")
            return True
        except Exception:
            return False

    async def close(self) -> None:
        def run():
            if self._client is not None:
                self._client.close()
                self._client = None
        try:
            await self._call(run)
        finally:
            self._executor.shutdown(wait=False)


# -- read queries (the `analytics query` command and, later, the management API) ----------

def recent_sql(database: str) -> str:
    return (f"SELECT ts, id, method, host, path, status, decision, round(toFloat64(latency_ms), 2) AS ms, "
            f"key_id, api_id FROM {database}.api_events "
            "WHERE ts >= now() - INTERVAL {minutes:UInt32} MINUTE "
            "ORDER BY ts DESC LIMIT {limit:UInt32}")


def minutes_sql(database: str) -> str:
    return (f"SELECT minute, workspace_id, api_id, sum(requests) AS total, "
            f"sumIf(requests, status_class = 2) AS ok_2xx, "
            f"sumIf(requests, status_class = 4) AS err_4xx, "
            f"sumIf(requests, status_class = 5) AS err_5xx, "
            f"sumIf(requests, decision = 'limited') AS limited, "
            f"arrayMap(x -> round(x, 2), quantilesMerge(0.5, 0.95, 0.99)(latency)) AS p50_p95_p99 "
            f"FROM {database}.api_events_minute "
            "WHERE minute >= now() - INTERVAL {minutes:UInt32} MINUTE "
            "GROUP BY minute, workspace_id, api_id ORDER BY minute DESC, api_id LIMIT {limit:UInt32}")
