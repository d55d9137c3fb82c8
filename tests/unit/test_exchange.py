"""The exchange driven with fake transports, no sockets: a ClientConnection fed request
bytes, an UpstreamConnection fed response bytes, the sweep's deadlines checked with a
chosen clock. Sections cited are RFC 9110 / RFC 9112."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from rateguard.proxy.gateway import Admission
from rateguard.proxy.http_server import ProxyServer
from rateguard.proxy.upstream import UpstreamConnection, UpstreamPool
from rateguard.snapshot.model import Api, Upstream

UPSTREAM_TIMEOUT, BODY_TIMEOUT, SEND_TIMEOUT = 1.0, 2.0, 3.0


class FakeTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = self.paused = self.eof = False
        self.buffered = 0  # bytes the kernel has not taken yet

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True


class FakeGateway:
    def __init__(self, api: Api) -> None:
        self.api = api

    async def admit(self, host, path, authorization, x_api_key, client_ip) -> Admission:
        return Admission(0, api=self.api, upstream_path=path)

    def event(self, *fields):
        return fields


class FakePool:
    def __init__(self) -> None:
        self.conns: list[UpstreamConnection] = []
        self.released: list[UpstreamConnection] = []

    def take_idle(self, upstream, now):
        return None

    async def connect(self, upstream) -> UpstreamConnection:
        conn = UpstreamConnection(upstream)
        conn.connection_made(FakeTransport())
        self.conns.append(conn)
        return conn

    def release(self, conn, now) -> None:
        conn.exchange = None
        self.released.append(conn)


class Rig:
    def __init__(self) -> None:
        api = Api("a", "ws", "/", Upstream.parse("http://up.test:8080"))
        self.pool = FakePool()
        self.events: list = []
        self.server = ProxyServer(
            FakeGateway(api), self.pool, publish=self.events.append, metrics=None,
            max_body=1 << 20, upstream_timeout=UPSTREAM_TIMEOUT, special_paths={},
            body_timeout=BODY_TIMEOUT, send_timeout=SEND_TIMEOUT)
        self.client = self.server.protocol()
        self.client.connection_made(FakeTransport())

    @property
    def sent(self) -> bytes:
        """What the client received."""
        return bytes(self.client.transport.data)

    @property
    def upstream(self) -> UpstreamConnection:
        return self.pool.conns[-1]

    @property
    def forwarded(self) -> bytes:
        return bytes(self.upstream.transport.data)

    async def feed(self, data: bytes) -> None:
        self.client.data_received(data)
        for _ in range(5):  # the exchange's task: admission, connect, send
            await asyncio.sleep(0)

    def check(self, now: float) -> None:
        for exchange in list(self.server.exchanges):
            exchange.check_timeout(now)


@pytest_asyncio.fixture
async def rig():
    return Rig()  # inside the running loop: the server takes it


async def test_a_get_is_forwarded_and_its_answer_relayed(rig):
    await rig.feed(b"GET /x?q=1 HTTP/1.1\r\nHost: gw.test\r\nAccept: */*\r\n\r\n")
    head = rig.forwarded
    assert head.startswith(b"GET /x?q=1 HTTP/1.1\r\nhost: up.test:8080\r\naccept: */*\r\n")
    assert b"\r\nvia: 1.1 rateguard\r\n" in head and b"\r\nx-forwarded-host: gw.test\r\n" in head
    rig.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                               b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\nok")
    sent = rig.sent
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n") and sent.endswith(b"\r\n\r\nok")
    assert sent.count(b"date: ") == 1 and b"1970" not in sent  # RFC 9110 6.6.1
    assert rig.pool.released == [rig.upstream] and len(rig.events) == 1


async def test_rfc9112_7_1_2_trailers_in_the_same_read_are_not_forwarded(rig):
    await rig.feed(b"POST /t HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nAuthorization: x\r\n\r\n")
    head, _, body = rig.forwarded.partition(b"\r\n\r\n")
    assert b"6.6.6.6" not in head and b"authorization" not in head.lower()
    assert body == b"3\r\nabc\r\n0\r\n\r\n"


async def test_rfc9112_9_6_bytes_after_close_are_dropped_and_the_request_answered(rig):
    await rig.feed(b"GET /1 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
                   b"GET /2 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    rig.client.data_received(b"more garbage\r\n\r\n")
    assert not rig.client.transport.closed and len(rig.pool.conns) == 1
    rig.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert rig.sent.count(b"HTTP/1.1 ") == 1 and rig.sent.endswith(b"ok")
    assert b"connection: close\r\n" in rig.sent and rig.client.transport.closed


@pytest.mark.parametrize("raw,status", [
    (b"GET /x HTTP/1.1\r\n\r\n", 400),                          # RFC 9112 3.2: no Host
    (b"GET /x HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),             # invalid Host
    (b"GET /x HTTP/2.0\r\nHost: gw\r\n\r\n", 505),              # RFC 9110 15.6.6
    (b"GET /x\r\n\r\n", 400),                                   # no version
    (b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),  # 9112 6.1
    (b"TRACE /x HTTP/1.1\r\nHost: gw\r\n\r\n", 405),            # RFC 9110 9.3.8
    (b"GET /%c0%ae%c0%ae/x HTTP/1.1\r\nHost: gw\r\n\r\n", 400),  # overlong UTF-8
])
async def test_refused_heads_never_reach_the_upstream(rig, raw, status):
    await rig.feed(raw)
    assert rig.sent.startswith(b"HTTP/1.1 %d " % status), rig.sent[:200]
    assert b"\r\ndate: " in rig.sent and not rig.pool.conns


async def test_rfc9110_15_2_2_unasked_101_is_502(rig):
    await rig.feed(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
    rig.upstream.data_received(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                               b"Upgrade: h2c\r\n\r\n")
    assert rig.sent.startswith(b"HTTP/1.1 502 ") and rig.upstream.transport.closed


async def test_an_extension_method_is_forwarded_as_sent(rig):
    await rig.feed(b"BREW /pot HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\ntea")
    assert rig.forwarded.startswith(b"BREW /pot HTTP/1.1\r\n") and rig.forwarded.endswith(b"tea")


# -- timeouts: inactivity, each direction on its own --------------------------------------


async def test_an_upload_in_progress_is_not_cut_by_the_upstream_timeout(rig):
    await rig.feed(b"POST /u HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
    exchange = rig.client.active
    start = exchange.body_activity
    for step in range(1, 8):  # 7 s of upload, 1 s between pieces, upstream timeout 1 s
        rig.check(start + step - 0.01)
        assert not exchange.finished, rig.sent
        rig.client.data_received(b"a" * 10)
        exchange.body_activity = start + step  # the clock the piece arrived at
    rig.client.data_received(b"a" * 20)  # the end of the body: the upstream's turn
    assert exchange.body_done and rig.forwarded.endswith(b"a" * 100)
    sent_at = exchange.last_activity
    rig.check(sent_at + UPSTREAM_TIMEOUT - 0.05)
    assert not exchange.finished
    rig.check(sent_at + UPSTREAM_TIMEOUT + 0.05)
    assert rig.sent.startswith(b"HTTP/1.1 504 ")


async def test_a_client_pausing_its_body_gets_408(rig):
    await rig.feed(b"POST /u HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nabc")
    exchange = rig.client.active
    rig.check(exchange.body_activity + BODY_TIMEOUT - 0.05)
    assert not exchange.finished
    rig.check(exchange.body_activity + BODY_TIMEOUT + 0.05)
    assert rig.sent.startswith(b"HTTP/1.1 408 ")


async def test_an_upstream_not_reading_the_body_gets_504(rig):
    await rig.feed(b"POST /u HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nabc")
    rig.upstream.pause_writing()  # its socket is full
    assert rig.client.transport.paused
    paused_at = rig.upstream.paused_at
    rig.check(paused_at + UPSTREAM_TIMEOUT + 0.05)
    assert rig.sent.startswith(b"HTTP/1.1 504 ")


async def test_a_slow_reader_holds_the_upstream_back_and_is_not_cut_before_send_timeout(rig):
    await rig.feed(b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n")
    exchange, upstream = rig.client.active, rig.upstream
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"z" * 100)
    rig.client.pause_writing()  # the client stopped reading
    assert upstream.transport.paused
    paused_at = rig.client.write_paused_at
    rig.check(paused_at + SEND_TIMEOUT - 0.05)  # 3x the upstream timeout: still alive
    assert not exchange.finished
    rig.client.resume_writing()  # it read again: progress, the upstream's timer restarts
    assert not upstream.transport.paused and exchange.last_activity >= paused_at
    upstream.data_received(b"z" * 900)
    assert rig.sent.endswith(b"z" * 1000) and exchange.finished


async def test_a_client_that_never_reads_again_is_cut_after_send_timeout(rig):
    await rig.feed(b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n")
    rig.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"z" * 100)
    rig.client.pause_writing()
    rig.check(rig.client.write_paused_at + SEND_TIMEOUT + 0.05)
    assert rig.client.transport.closed and rig.upstream.transport.closed


async def test_the_upstream_timeout_runs_from_the_request_sent_to_the_first_byte(rig):
    await rig.feed(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
    exchange = rig.client.active
    rig.check(exchange.last_activity + UPSTREAM_TIMEOUT - 0.05)
    assert not exchange.finished
    rig.check(exchange.last_activity + UPSTREAM_TIMEOUT + 0.05)
    assert rig.sent.startswith(b"HTTP/1.1 504 ")


async def test_an_early_answer_during_an_upload_is_not_cut_while_the_body_flows(rig):
    await rig.feed(b"POST /u HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
    exchange = rig.client.active
    rig.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nst")
    start = exchange.last_activity
    exchange.body_activity = start + 1.5  # the client kept sending
    rig.check(start + 2.0)  # upstream silent 2 s > 1 s, but the body moved 0.5 s ago
    assert not exchange.finished
    rig.check(start + 1.5 + UPSTREAM_TIMEOUT + 0.05)
    assert exchange.finished and rig.client.closing  # cut (lingering): the answer had begun


async def test_rfc9110_9_3_6_connect_is_refused_not_tunnelled(rig):
    await rig.feed(b"CONNECT internal.example:22 HTTP/1.1\r\nHost: internal.example:22\r\n\r\n")
    assert rig.sent.startswith(b"HTTP/1.1 405 ") and b"allow: " in rig.sent
    assert rig.pool.conns == []  # nothing reached an upstream


async def test_an_early_answer_while_the_upstream_is_full_leaves_the_client_reading(rig):
    """The upstream stopped taking our body (client paused "upstream"), then answered:
    the client's next request must still be read."""
    await rig.feed(b"POST /u HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\n0123456789")
    up = rig.upstream
    up.pause_writing()
    assert rig.client.transport.paused
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert not rig.client.transport.paused and not rig.client.paused_for
    await rig.feed(b"GET /next HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert len(rig.pool.conns) == 2 or b"GET /next" in rig.forwarded


def _pooled(transport: FakeTransport) -> tuple[UpstreamPool, UpstreamConnection]:
    pool = UpstreamPool()
    conn = UpstreamConnection(Upstream.parse("http://up.test:8080"))
    conn.connection_made(transport)
    return pool, conn


def test_a_connection_paused_by_a_slow_client_reads_again_once_pooled():
    transport = FakeTransport()
    pool, conn = _pooled(transport)
    transport.pause_reading()  # the last flush to a slow client filled its socket
    pool.release(conn, now=0.0)
    assert not transport.paused and pool.take_idle(conn.upstream, now=1.0) is conn


@pytest.mark.parametrize("buffered,paused_at", [(512, 0.0), (0, 3.0)])
def test_a_connection_with_our_request_unsent_is_never_reused(buffered, paused_at):
    """Answered before it took our whole body: the connection is mid-message."""
    transport = FakeTransport()
    pool, conn = _pooled(transport)
    transport.buffered, conn.paused_at = buffered, paused_at
    pool.release(conn, now=0.0)
    assert transport.closed and pool.take_idle(conn.upstream, now=1.0) is None


async def test_rfc9112_9_3_2_a_pipelined_request_too_large_is_answered_in_its_turn(rig):
    """The second request's body exceeds the limit while the first is still being
    answered: the first gets its 200, then the second its 413, then the close."""
    rig.server.max_body = 10
    await rig.feed(b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n"
                   b"POST /b HTTP/1.1\r\nHost: gw\r\nContent-Length: 50\r\n\r\n" + b"x" * 50)
    assert rig.sent == b""  # nothing may overtake the first answer
    rig.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    for _ in range(5):
        await asyncio.sleep(0)
    sent = rig.sent
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\n\r\nok" in sent
    assert sent.index(b"HTTP/1.1 413 ") > sent.index(b"\r\n\r\nok")
    assert rig.server.inflight == 0 and len(rig.pool.conns) == 1


async def test_rfc9112_6_1_a_transfer_coding_other_than_chunked_is_501(rig):
    await rig.feed(b"POST /z HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\n\r\n")
    assert rig.sent.startswith(b"HTTP/1.1 501 Not Implemented\r\n")
    assert rig.pool.conns == []
