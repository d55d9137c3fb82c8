"""Real servers for the tests: the embedded ones, or those named by REDIS_URL,
KAFKA_BROKERS and CLICKHOUSE_URL. Also a test upstream and proxy processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from rateguard.analytics.worker import AnalyticsWorker
from rateguard.embedded.servers import free_port, stop_process, wait_for_port
from rateguard.events.topics import ensure_topic
from rateguard.settings import Settings


class Upstream:
    """An upstream that records what it receives. Endpoints:

    /echo...        JSON of method, path (raw), query, headers, body sha256 and size
    /slow?s=N       answers after N seconds
    /bytes?n=N      streams N bytes (chunked), with an x-sha256 trailer-less header
    /cookies        two Set-Cookie headers
    /status/N       answers with status N
    """

    def __init__(self) -> None:
        self.calls = 0
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/slow", self.slow)
        app.router.add_route("*", "/bytes", self.bytes_)
        app.router.add_route("*", "/cookies", self.cookies)
        app.router.add_route("*", "/status/{code}", self.status)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def echo(self, request: web.Request) -> web.Response:
        self.calls += 1
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({
            "method": request.method, "path": request.raw_path.split("?")[0],
            "query": request.query_string, "raw_path": request.raw_path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "header_list": [[k.lower(), v] for k, v in request.headers.items()],
            "sha256": digest.hexdigest(), "size": size,
        })

    async def slow(self, request: web.Request) -> web.Response:
        self.calls += 1
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.json_response({"slept": True})

    async def bytes_(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        n = int(request.query["n"])
        block = hashlib.sha256(b"rateguard").digest() * 2048  # 64 KiB
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        while sent < n:
            piece = block[: min(len(block), n - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def cookies(self, request: web.Request) -> web.Response:
        self.calls += 1
        response = web.Response(text="cookies")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
        return response

    async def status(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response({"status": int(request.match_info["code"])},
                                 status=int(request.match_info["code"]))

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def expected_bytes(n: int) -> str:
    block = hashlib.sha256(b"rateguard").digest() * 2048
    digest = hashlib.sha256()
    sent = 0
    while sent < n:
        piece = block[: min(len(block), n - sent)]
        digest.update(piece)
        sent += len(piece)
    return digest.hexdigest()


class ProxyProcess:
    """`rateguard proxy` as a real child process."""

    def __init__(self, config: dict, env: dict[str, str], workdir: Path, name: str) -> None:
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.env = {**os.environ, **env, "PROXY_PORT": str(self.port),
                    "METRICS_PORT": str(self.metrics_port), "LOG_LEVEL": "info"}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ProxyProcess":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rateguard", "proxy", "--config", str(self.config_path)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, 20, f"proxy (log {self.log_path})", self.proc)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10) -> None:
        import urllib.request
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"proxy not ready; log:\n{self.log()}")

    def update_config(self, config: dict) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)


async def raw_exchange(port: int, raw: bytes, *, wait: float = 5.0, pause: float = 0.0,
                       rest: bytes = b"") -> bytes:
    """Raw bytes to 127.0.0.1:``port`` (then, after ``pause``, ``rest``), no HTTP client
    in between; everything read until the peer closes or ``wait`` seconds pass."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)
        if rest:
            try:
                writer.write(rest)
                await writer.drain()
            except ConnectionError:
                pass
        data = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            except (asyncio.TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            data += chunk
        return data
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def fetch(session: aiohttp.ClientSession, method: str, url: str, **kw):
    async with session.request(method, url, **kw) as response:
        body = await response.read()
        return response.status, response.headers, body


@contextlib.asynccontextmanager
async def analytics_worker(env: dict[str, str]):
    """An analytics worker in this process for the settings ``env`` names, its topic
    created first; stopped on exit."""
    settings = Settings.from_env(env)
    await ensure_topic(settings.KAFKA_BROKERS, settings.KAFKA_TOPIC)
    worker = AnalyticsWorker(settings)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
