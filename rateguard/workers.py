"""Sidecar workers: one small interface, discovered through an entry-point group.

A worker is a class registered under ``rateguard.workers`` in a package's metadata:

    [project.entry-points."rateguard.workers"]
    analytics = "rateguard.analytics.worker:AnalyticsWorker"

constructed with the Settings, it provides ``start()``, ``stop()`` and ``health()``
(and optionally ``routes()``, extra aiohttp routes on its health port). ``run_worker``
serves ``/healthz`` and ``/readyz`` on HEALTH_PORT and stops the worker on SIGTERM.
Another worker (a billing exporter, say) plugs in without touching the proxy.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from importlib.metadata import entry_points
from typing import Protocol

import orjson
from aiohttp import web

from rateguard.errors import ConfigError
from rateguard.settings import Settings

log = logging.getLogger(__name__)

GROUP = "rateguard.workers"


class Worker(Protocol):
    name: str

    def __init__(self, settings: Settings) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> dict:
        """``{"ok": bool, ...detail}``; ok False makes /readyz answer 503."""
        ...


def available() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load(name: str) -> type:
    found = available()
    if name not in found:
        raise ConfigError(f"no worker named {name!r}; installed: {', '.join(sorted(found))}")
    return found[name].load()


async def serve_health(worker, host: str, port: int) -> web.AppRunner:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "worker": worker.name})

    async def readyz(request: web.Request) -> web.Response:
        detail = worker.health()
        return web.Response(status=200 if detail.get("ok") else 503,
                            body=orjson.dumps(detail, default=str),
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    routes = getattr(worker, "routes", None)
    if routes is not None:
        app.router.add_routes(routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def run_worker(worker, *, host: str = "0.0.0.0", port: int = 8080) -> None:
    """Start the worker and its health server; stop both on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve_health(worker, host, port)
    log.info("%s worker: health on %s:%d", worker.name, host, port)
    try:
        await worker.start()
        await stop.wait()
    finally:
        await worker.stop()
        await runner.cleanup()
