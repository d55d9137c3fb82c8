"""Baseline: the plain Python gateway a team would write first.

An aiohttp ``web`` server and one keep-alive ``ClientSession`` to the upstream, with
the same per-request work as RateGuard's default scenario, done the obvious way: the
API key from ``X-API-Key`` or ``Authorization: Bearer`` looked up by SHA-256 in a dict,
one redis-py asyncio ``EVALSHA`` of RateGuard's own Lua script (sliding window), then
the request forwarded and the whole response read and returned with the
``RateLimit-*`` headers. No events. Runs on uvloop, like the proxy.

    python -m bench.baselines.aiohttp_proxy --port 3002 --upstream http://127.0.0.1:8081 \\
        --redis-url redis://127.0.0.1:6379/0 --key-hashes hashes.txt [--no-limit]
"""

from __future__ import annotations

import argparse
import hashlib
import signal

import aiohttp
import redis.asyncio as redis
from aiohttp import web

from rateguard.limiter.redis_store import SCRIPT, SCRIPT_SHA

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
              "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
              "content-length", "content-encoding"}
LIMIT = 1_000_000_000
WINDOW_MS = 1000


def make_app(upstream: str, redis_url: str, key_hashes: set[str], limit: bool) -> web.Application:
    app = web.Application()

    async def startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=75),
            auto_decompress=False)
        if limit:
            app["redis"] = redis.Redis.from_url(redis_url)
            await app["redis"].script_load(SCRIPT)

    async def cleanup(app: web.Application) -> None:
        await app["session"].close()
        if limit:
            await app["redis"].aclose()

    async def handle(request: web.Request) -> web.StreamResponse:
        presented = request.headers.get("X-API-Key")
        if presented is None:
            auth = request.headers.get("Authorization", "")
            if auth[:7].lower() == "bearer ":
                presented = auth[7:].strip()
        if not presented or hashlib.sha256(presented.encode()).hexdigest() not in key_hashes:
            return web.json_response({"error": "unauthorized"}, status=401)
        extra = {}
        if limit:
            digest = hashlib.sha256(presented.encode()).hexdigest()[:16]
            allowed, _index, remaining, reset_ms, retry_ms = await app["redis"].evalsha(
                SCRIPT_SHA, 1, f"rg:{{bench}}:rl:base:{digest}:1s", "sw", 1, LIMIT, WINDOW_MS)
            extra = {"RateLimit-Limit": str(LIMIT), "RateLimit-Remaining": str(remaining),
                     "RateLimit-Reset": str(-(-reset_ms // 1000))}
            if allowed != 1:
                return web.json_response({"error": "rate_limited"}, status=429, headers={
                    **extra, "Retry-After": str(max(1, -(-retry_ms // 1000)))})
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in ("host", "x-api-key")}
        headers["X-Forwarded-For"] = request.remote or ""
        async with app["session"].request(request.method, upstream + request.path_qs,
                                          headers=headers, data=await request.read()) as resp:
            body = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            out.update(extra)
            return web.Response(status=resp.status, body=body, headers=out)

    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app


async def serve(args) -> None:
    import asyncio

    key_hashes = set()
    if args.key_hashes:
        with open(args.key_hashes) as fh:
            key_hashes = {line.strip() for line in fh if line.strip()}
    app = make_app(args.upstream.rstrip("/"), args.redis_url, key_hashes, not args.no_limit)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, backlog=2048).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines.aiohttp_proxy",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--key-hashes", help="file of accepted SHA-256 key hashes, one a line")
    parser.add_argument("--no-limit", action="store_true", help="skip the EVALSHA")
    args = parser.parse_args(argv)
    try:
        import uvloop
        uvloop.run(serve(args))
    except ImportError:  # pragma: no cover
        import asyncio
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
