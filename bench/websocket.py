"""WebSocket relay: messages per second and added latency, through the proxy beside a
direct connection to the same echo upstream.

    python -m bench.websocket [--messages 2000] [--size 64] [--connections 16]
                              [--seconds 5] [--scenario default]

The upstream is an aiohttp WebSocket echo server in its own process. For each target
(direct, then the proxy with the scenario's features: key auth, the limiter and events
apply to the handshake only) it measures:

* latency: ``--messages`` round trips one after the other on one connection (p50, p99);
* throughput: ``--connections`` connections each keeping 8 messages in flight for
  ``--seconds``; echoed messages per second.

Everything runs on 127.0.0.1 and is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bench.harness import procs, runner
from bench.harness.scenarios import SCENARIOS

WS_PATH = "/bench/ws"


def serve(port: int) -> None:
    """The echo upstream (``--serve PORT``)."""
    import aiohttp
    from aiohttp import web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def latency(url: str, headers: dict, messages: int, size: int) -> dict:
    import aiohttp
    payload = b"x" * size
    times = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers=headers) as ws:
            for _ in range(100):  # warm-up
                await ws.send_bytes(payload)
                await ws.receive()
            for _ in range(messages):
                started = time.perf_counter()
                await ws.send_bytes(payload)
                await ws.receive()
                times.append(time.perf_counter() - started)
    times.sort()
    return {"p50_us": times[len(times) // 2] * 1e6, "p99_us": times[int(len(times) * 0.99)] * 1e6}


async def throughput(url: str, headers: dict, connections: int, seconds: float,
                     size: int) -> float:
    import aiohttp
    payload = b"x" * size
    done = 0
    async with aiohttp.ClientSession() as session:
        async def one() -> None:
            nonlocal done
            async with session.ws_connect(url, headers=headers) as ws:
                deadline = time.monotonic() + seconds
                for _ in range(8):
                    await ws.send_bytes(payload)
                while time.monotonic() < deadline:
                    await ws.receive()
                    done += 1
                    await ws.send_bytes(payload)
                for _ in range(8):
                    await ws.receive()
        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(connections)))
        return done / (time.monotonic() - started)


def measure(url: str, headers: dict, args) -> dict:
    result = asyncio.run(latency(url, headers, args.messages, args.size))
    result["messages_per_s"] = asyncio.run(
        throughput(url, headers, args.connections, args.seconds, args.size))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.websocket",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="message bytes")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--scenario", default="default")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    scenario = SCENARIOS[args.scenario]
    layout = procs.Layout(True)
    results = {}
    with runner.new_workdir() as tmp:
        from pathlib import Path
        workdir = Path(tmp)
        infra = runner.Infra(workdir, layout)
        port = procs.free_port()
        log_path = workdir / "ws-upstream.log"
        proc = procs.spawn([sys.executable, "-m", "bench.websocket", "--serve", str(port)],
                           log=log_path, cpus=layout.helpers,
                           env={"PYTHONPATH": runner._pythonpath()})
        upstream = runner.Server("direct", f"http://127.0.0.1:{port}", proc,
                                 log_path=log_path, extra={"port": port})
        proxy = None
        try:
            procs.wait_for_port(port, 15, "the WebSocket upstream", proc, log_path)
            runner.log("direct")
            results["direct"] = measure(f"http://127.0.0.1:{port}/ws", {}, args)
            key = runner.make_keys(1)[0]
            proxy = runner.start_proxy(workdir, scenario, upstream, [key], infra, layout)
            base = proxy.url.rsplit(runner.PATH, 1)[0]
            runner.log("proxy")
            results["proxy"] = measure(base + WS_PATH, {"Authorization": f"Bearer {key}"}, args)
        finally:
            if proxy is not None:
                proxy.stop()
            upstream.stop()
            infra.close()
    direct = results["direct"]
    print(f"| target | p50 us | p99 us | messages/s ({args.connections} connections) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['messages_per_s']:,.0f} |")
    proxy_r = results.get("proxy")
    if proxy_r:
        print(f"\nadded by the proxy: {proxy_r['p50_us'] - direct['p50_us']:.0f} us at p50, "
              f"{proxy_r['p99_us'] - direct['p99_us']:.0f} us at p99; throughput "
              f"{proxy_r['messages_per_s'] / direct['messages_per_s']:.2f}x direct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
