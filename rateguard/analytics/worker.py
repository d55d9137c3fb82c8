"""The analytics sidecar worker: the ingester plus its health and read endpoints.

The read endpoints (``/v1/recent``, ``/v1/minutes``) let ``rateguard analytics query``
read through this process when it holds the embedded chdb engine, which only one
process may open.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web

from rateguard.analytics.clickhouse import ClickHouse, minutes_sql, recent_sql
from rateguard.analytics.consumer import Ingester
from rateguard.settings import Settings

log = logging.getLogger(__name__)


class AnalyticsWorker:
    name = "analytics"

    def __init__(self, settings: Settings) -> None:
        settings.require("KAFKA_BROKERS", "CLICKHOUSE_URL")
        self.settings = settings
        self.clickhouse = ClickHouse(settings.CLICKHOUSE_URL, settings.CLICKHOUSE_DATABASE,
                                     settings.ANALYTICS_TTL_DAYS)
        self.ingester: Ingester | None = None
        self._task: asyncio.Task | None = None
        self.started = False

    async def start(self) -> None:
        s = self.settings
        await self.clickhouse.setup()
        self.ingester = Ingester(self.clickhouse, s.KAFKA_BROKERS, s.KAFKA_TOPIC,
                                 s.ANALYTICS_GROUP, batch_size=s.ANALYTICS_BATCH_SIZE,
                                 batch_seconds=s.ANALYTICS_BATCH_SECONDS)
        backoff = 0.2
        while True:
            try:
                await self.ingester.start()
                break
            except Exception as exc:
                log.warning("analytics: kafka unavailable (%s); retrying in %.1fs", exc, backoff)
                await self.ingester.consumer.stop()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self.ingester = Ingester(self.clickhouse, s.KAFKA_BROKERS, s.KAFKA_TOPIC,
                                         s.ANALYTICS_GROUP, batch_size=s.ANALYTICS_BATCH_SIZE,
                                         batch_seconds=s.ANALYTICS_BATCH_SECONDS)
        self._task = asyncio.ensure_future(self._run())
        self.started = True
        log.info("analytics: consuming %s into %s.api_events", s.KAFKA_TOPIC,
                 s.CLICKHOUSE_DATABASE)

    async def _run(self) -> None:
        try:
            await self.ingester.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("analytics: ingester stopped")
            raise

    async def stop(self) -> None:
        if self.ingester is not None:
            self.ingester._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                self._task.cancel()
        if self.ingester is not None:
            await self.ingester.stop()
        await self.clickhouse.close()

    def health(self) -> dict:
        ing = self.ingester
        running = self._task is not None and not self._task.done()
        return {
            "ok": self.started and running and (ing is None or ing.last_error is None),
            "inserted": ing.inserted if ing else 0,
            "invalid": ing.invalid if ing else 0,
            "last_insert": ing.last_insert if ing else 0,
            "last_error": ing.last_error if ing else None,
        }

    def routes(self) -> list:
        async def read(request: web.Request, sql: str) -> web.Response:
            try:
                minutes = int(request.query.get("minutes", "60"))
                limit = int(request.query.get("limit", "20"))
            except ValueError:
                return web.json_response({"error": "bad_request",
                                          "message": "minutes and limit must be integers"},
                                         status=400)
            if not (1 <= minutes <= 525600 and 1 <= limit <= 10000):
                return web.json_response({"error": "bad_request",
                                          "message": "minutes 1-525600, limit 1-10000"},
                                         status=400)
            columns, rows = await self.clickhouse.query(sql, {"minutes": minutes, "limit": limit})
            body = orjson.dumps({"columns": columns, "rows": rows, "at": time.time()},
                                default=str)
            return web.Response(body=body, content_type="application/json")

        db = self.settings.CLICKHOUSE_DATABASE

        async def recent(request: web.Request) -> web.Response:
            return await read(request, recent_sql(db))

        async def minutes(request: web.Request) -> web.Response:
            return await read(request, minutes_sql(db))

        return [web.get("/v1/recent", recent), web.get("/v1/minutes", minutes)]
