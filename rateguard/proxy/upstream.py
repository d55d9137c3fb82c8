"""Upstream connections: a keep-alive pool of HTTP/1.1 client connections.

Each connection parses responses with httptools and hands the pieces to the exchange
it currently serves (a ``ResponseSink``: exchange.Exchange). Connections go back to the pool only
after a complete response on a keep-alive connection with the request fully sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import defaultdict
from typing import Any, Protocol

import httptools

from rateguard.snapshot.model import ALWAYS, Upstream, UpstreamGuard


class UpstreamConnectError(Exception):
    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class ResponseSink(Protocol):
    """The interface between an upstream connection and the exchange it serves
    (implemented by exchange.Exchange; unit tests drive either side with a fake)."""

    client: Any  # pause_reading / resume_reading("upstream"): flow control of the body
    server: Any  # server.loop.time(): the clock of the timeouts
    last_activity: float  # progress of the upstream, refreshed when it drains our writes

    def on_response_head(self, status: int, reason: bytes,
                         headers: list[tuple[bytes, bytes]]) -> None: ...

    def on_response_body(self, chunk: bytes) -> None: ...

    def on_response_end(self, upstream_keep_alive: bool) -> None: ...

    def on_upstream_error(self, message: str) -> None: ...

    def on_upstream_lost(self, conn: "UpstreamConnection") -> None: ...

    def on_switch(self, conn: "UpstreamConnection", reason: bytes,
                  headers: list[tuple[bytes, bytes]], rest: bytes) -> bool:
        """101 from the upstream: take the connection over (a WebSocket relay), or
        False to refuse it."""

    def flush(self) -> None:
        """Write what the response pieces of one read produced, in one call."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("upstream", "transport", "parser", "exchange", "closed", "idle_since",
                 "_reason", "_headers", "_informational", "received", "paused_at")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: ResponseSink | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._informational = False
        self.received = False  # any response byte for the current exchange
        self.paused_at = 0.0  # since when the upstream has not drained our writes (0: it has)

    # -- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # data on an idle connection: it is unusable
            self.abort()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # 101 Switching Protocols: relayed for a WebSocket handshake; to a request
            # that asked for no upgrade it is a 502 (RFC 9110 15.2.2: a server must not
            # switch unless asked).
            if self.parser.get_status_code() == 101 and exchange.on_switch(
                    self, self._reason, self._headers, data[exc.args[0]:] if exc.args else b""):
                return
            exchange.on_upstream_error("upstream switched protocols unasked")
            self.abort()
            return
        except httptools.HttpParserError:
            exchange.on_upstream_error("upstream sent an invalid HTTP response")
            self.abort()
            return
        exchange.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.on_upstream_lost(self)

    def pause_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            self.paused_at = exchange.server.loop.time()
            exchange.client.pause_reading("upstream")

    def resume_writing(self) -> None:
        self.paused_at = 0.0
        exchange = self.exchange
        if exchange is not None:
            exchange.last_activity = exchange.server.loop.time()  # it took our bytes
            exchange.client.resume_reading("upstream")

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self._informational = 100 <= status < 200
        if self._informational or self.exchange is None:
            return  # 1xx interim responses are not passed on
        self.exchange.on_response_head(status, self._reason, self._headers)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.exchange is not None:
            self.exchange.on_response_end(self.parser.should_keep_alive())

    # -- use ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections per upstream, most recently used first."""

    def __init__(self, *, connect_timeout: float = 5.0, max_idle: int = 256,
                 idle_timeout: float = 30.0, guard: UpstreamGuard = ALWAYS) -> None:
        self.connect_timeout = connect_timeout
        self.guard = guard
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[str, list[UpstreamConnection]] = defaultdict(list)  # by pool_key
        self._ssl = ssl.create_default_context()

    def take_idle(self, upstream: Upstream, now: float) -> UpstreamConnection | None:
        idle = self._idle.get(upstream.pool_key)
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.abort()
        return None

    async def _resolve(self, upstream: Upstream) -> str:
        """The address to connect to, checked by the SSRF guard after resolution: a
        public name that resolves to a refused address (DNS rebinding) is refused, and
        the connection goes to the very address that was checked."""
        try:
            ipaddress.ip_address(upstream.host)
        except ValueError:
            pass
        else:  # a literal address: nothing to resolve
            refused = self.guard.check_address(upstream.host)
            if refused is not None:
                raise UpstreamConnectError(f"upstream {upstream.host} refused: {refused}")
            return upstream.host
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(upstream.host, upstream.port, type=socket.SOCK_STREAM)
        refused = None
        for family, _type, _proto, _name, sockaddr in infos:
            refused = self.guard.check_address(sockaddr[0])
            if refused is None:
                return sockaddr[0]
        raise UpstreamConnectError(f"upstream {upstream.host} refused: {refused}")

    async def connect(self, upstream: Upstream) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            address = await asyncio.wait_for(self._resolve(upstream), self.connect_timeout)
            _transport, conn = await asyncio.wait_for(loop.create_connection(
                lambda: UpstreamConnection(upstream), address, upstream.port,
                ssl=self._ssl if upstream.tls else None,
                server_hostname=upstream.host if upstream.tls else None),
                self.connect_timeout)
        except asyncio.TimeoutError:
            raise UpstreamConnectError(
                f"connecting to upstream {upstream.host}:{upstream.port} timed out",
                timeout=True) from None
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise UpstreamConnectError(
                f"cannot connect to upstream {upstream.host}:{upstream.port}: {reason}") from None
        return conn

    def release(self, conn: UpstreamConnection, now: float) -> None:
        conn.exchange = None
        conn.received = False
        paused, conn.paused_at = conn.paused_at, 0.0
        idle = self._idle[conn.upstream.pool_key]
        transport = conn.transport
        # Reusable only between messages: not when part of our request is still unsent
        # (the upstream answered before taking the whole body), or was never taken.
        if conn.closed or len(idle) >= self.max_idle or transport is None or paused \
                or transport.get_write_buffer_size():
            conn.abort()
            return
        # The last flush to a slow client may have paused reading it (the client's
        # pause_writing): a pooled connection must read, or the next request that takes
        # it would never see its answer, nor the upstream closing it.
        transport.resume_reading()
        conn.idle_since = now
        idle.append(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
