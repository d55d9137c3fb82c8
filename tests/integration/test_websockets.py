"""WebSockets through the proxy (RFC 6455), with aiohttp's client and server.

The handshake goes through routing, key auth and the limiter like any request; then the
proxy relays bytes both ways (rateguard/proxy/relay.py).
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from rateguard.embedded.servers import free_port
from tests.integration.conftest import Keys, wait_until
from tests.servers import ProxyProcess

pytestmark = pytest.mark.integration


class WsUpstream:
    """/echo echoes every message; /close sends one message then closes with 4000;
    /flood?n=N sends N 64 KiB binary messages then closes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.closed_by_peer = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/echo", self.echo)
        app.router.add_get("/close", self.close)
        app.router.add_get("/flood", self.flood)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def echo(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        self.closed_by_peer += 1
        return ws

    async def close(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("bye")
        await ws.close(code=4000, message=b"done")
        return ws

    async def flood(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        block = b"f" * 65536
        for _ in range(int(request.query["n"])):
            await ws.send_bytes(block)
        await ws.close()
        return ws

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest_asyncio.fixture(scope="module")
async def ws_upstream():
    server = WsUpstream()
    await server.start()
    yield server
    await server.stop()


def ws_config(ws_upstream, keys: Keys) -> dict:
    return {"workspaces": [{
        "id": "wsws", "keys": [keys.entry("k")],
        "apis": [{"id": "ws", "prefix": "/ws", "upstream": ws_upstream.url}]}]}


@pytest.fixture(scope="module")
def proxy(proxies, ws_upstream):
    keys = Keys()
    started = proxies(ws_config(ws_upstream, keys))
    started.keys = keys
    return started


def headers(proxy) -> dict[str, str]:
    return proxy.keys.auth("k")


async def test_rfc6455_echo_text_and_binary(proxy):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{proxy.url}/ws/echo", headers=headers(proxy)) as ws:
            assert ws._response.headers.get("X-Request-Id")
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "hello"
            await ws.send_bytes(b"\x00\x01\x02")
            assert (await ws.receive(timeout=5)).data == b"\x00\x01\x02"


async def test_large_messages_both_ways(proxy):
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{proxy.url}/ws/echo", headers=headers(proxy),
                                      max_msg_size=64 * 1024 * 1024) as ws:
            await ws.send_bytes(payload)
            msg = await ws.receive(timeout=20)
            assert msg.data == payload


async def test_many_concurrent_connections(proxy):
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> str:
            async with session.ws_connect(f"{proxy.url}/ws/echo", headers=headers(proxy)) as ws:
                for n in range(5):
                    await ws.send_str(f"{i}-{n}")
                    assert (await ws.receive(timeout=10)).data == f"{i}-{n}"
                return "ok"
        assert await asyncio.gather(*(one(i) for i in range(50))) == ["ok"] * 50


async def open_websockets(proxy, session) -> float:
    async with session.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("rateguard_websockets_open "):
                return float(line.split()[1])
    raise AssertionError("no rateguard_websockets_open metric")


async def test_the_metrics_count_open_connections(proxy):
    async with aiohttp.ClientSession() as session:
        before = await open_websockets(proxy, session)
        sockets = [await session.ws_connect(f"{proxy.url}/ws/echo", headers=headers(proxy))
                   for _ in range(3)]
        assert await open_websockets(proxy, session) == before + 3
        for ws in sockets:
            await ws.close()
        for _ in range(50):
            if await open_websockets(proxy, session) == before:
                break
            await asyncio.sleep(0.05)
        assert await open_websockets(proxy, session) == before


async def test_each_connection_is_one_event_with_its_close_code(proxy, analytics):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{proxy.url}/ws/close", headers=headers(proxy)) as ws:
            request_id = ws._response.headers["X-Request-Id"]
            assert (await ws.receive(timeout=5)).data == "bye"
            assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
    clickhouse = analytics.clickhouse

    async def landed():
        _, rows = await clickhouse.query(
            f"SELECT status, close_code, bytes_out, latency_ms FROM {clickhouse.database}"
            f".api_events WHERE id = {{id:String}}", {"id": request_id})
        return rows

    assert await wait_until(landed, timeout=15), "the event did not reach ClickHouse"
    [(status, close_code, bytes_out, latency_ms)] = await landed()
    assert (status, close_code) == (101, 4000) and bytes_out > 0 and latency_ms > 0


async def test_the_upstream_closing_reaches_the_client_with_its_code(proxy):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{proxy.url}/ws/close", headers=headers(proxy)) as ws:
            assert (await ws.receive(timeout=5)).data == "bye"
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4000


async def test_a_slow_consumer_gets_everything(proxy):
    """20 MiB pushed by the upstream to a client that reads slowly: flow control holds
    the upstream back; every message arrives."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{proxy.url}/ws/flood?n=320",
                                      headers=headers(proxy)) as ws:
            got = 0
            while True:
                msg = await ws.receive(timeout=20)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                got += len(msg.data)
                if got % (4 * 1024 * 1024) == 0:
                    await asyncio.sleep(0.3)
            assert got == 320 * 65536


async def test_a_vanishing_client_closes_the_upstream(proxy, ws_upstream, session):
    before = ws_upstream.closed_by_peer
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    key = proxy.keys.plain["k"]
    writer.write(f"GET /ws/echo HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    writer.transport.abort()  # gone, no close frame
    for _ in range(50):
        if ws_upstream.closed_by_peer > before:
            break
        await asyncio.sleep(0.1)
    assert ws_upstream.closed_by_peer > before
    async with session.get(f"{proxy.url}/healthz") as response:
        assert response.status == 200


async def test_a_rejected_handshake_is_an_ordinary_401(proxy):
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
            await session.ws_connect(f"{proxy.url}/ws/echo",
                                     headers={"Authorization": "Bearer rg_nope"})
        assert error.value.status == 401


async def test_rfc6455_7_4_1_drain_closes_with_1001(workdir, env, ws_upstream):
    keys = Keys()
    proxy = ProxyProcess(ws_config(ws_upstream, keys), {**env, "PROXY_DRAIN_SECONDS": "10"},
                         workdir, "ws-drain")
    proxy.keys = keys
    proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{proxy.url}/ws/echo", headers=headers(proxy)) as ws:
                await ws.send_str("before")
                assert (await ws.receive(timeout=5)).data == "before"
                proxy.proc.send_signal(signal.SIGTERM)
                msg = await ws.receive(timeout=8)
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
        assert proxy.proc.wait(10) == 0
        assert "Traceback" not in proxy.log()
    finally:
        proxy.stop()


async def test_the_proxy_logged_no_traceback(proxy):
    assert "Traceback" not in proxy.log()
