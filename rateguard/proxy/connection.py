"""One client TCP connection: parsing (httptools), requests answered in order
(pipelining), flow control both ways, and the connection's own deadlines (head,
keep-alive idle, lingering close).

Flow control: a full upstream socket pauses reading from the client, a full client
socket pauses reading from the upstream, so a 10 MB body never sits in memory whole.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import TYPE_CHECKING

import httptools

from rateguard.proxy import headers as h
from rateguard.proxy import request_head as rh
from rateguard.proxy.client_address import is_trusted
from rateguard.proxy.exchange import _AUTHORIZATION, Exchange

if TYPE_CHECKING:
    from rateguard.proxy.http_server import ProxyServer

MAX_HEAD_BYTES = 32 * 1024
LINGER_SECONDS = 2.0  # reading and dropping a refused body before closing
# Parsed in place of a method llhttp does not know (no framing of its own in llhttp).
_PLACEHOLDER_METHOD = b"PROPFIND"
MAX_METHOD_BYTES = 64
_FORWARDED = frozenset({b"forwarded"})


class _HeadTooLarge(Exception):
    pass


class ClientConnection(asyncio.Protocol):
    """One client TCP connection; requests on it are answered in order."""

    __slots__ = ("server", "transport", "parser", "client_ip", "client_ip_bytes", "url",
                 "headers", "head_bytes", "current", "active", "pending", "paused_for",
                 "closing", "writing_paused", "idle_since", "head_since", "linger_until",
                 "hop", "drop", "drop_key", "write_paused_at", "final", "valid_host",
                 "marks", "method_override", "upgrade_rest")

    def __init__(self, server: "ProxyServer") -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.current: Exchange | None = None
        self.active: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.paused_for: set[str] = set()
        self.closing = False
        self.writing_paused = False
        self.write_paused_at = 0.0
        # The last request this connection serves has been read (Connection: close,
        # HTTP/1.0): whatever the client sends after it is dropped, not parsed.
        self.final = False
        self.hop = b""
        self.marks = 0  # request starts + ends parsed: even between requests
        self.method_override: bytes | None = None
        self.upgrade_rest = b""  # bytes after a WebSocket handshake, for the relay
        self.valid_host = b""
        self.drop = self.drop_key = _FORWARDED
        # Deadlines checked by the server's sweep (no timer per request).
        self.idle_since = server.loop.time()
        # When an unanswered request head started, 0 if none. A new connection owes
        # its first head within the head timeout too (slowloris).
        self.head_since = self.idle_since
        self.linger_until = 0.0

    # -- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self.client_ip_bytes = self.client_ip.encode()
        self.hop = h.forwarding_hop(self.client_ip_bytes, b"http")
        # A client's Forwarded is passed on only from a trusted proxy (as X-Forwarded-*).
        if is_trusted(self.client_ip, self.server.trusted_proxies):
            self.drop = frozenset()
        self.drop_key = self.drop | _AUTHORIZATION
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.final:
            return
        marks = self.marks
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The head asked for another protocol: nothing after it is HTTP. A WebSocket
            # handshake keeps what followed it for the relay (see relay.py); any other
            # upgrade is answered as a plain request, then the connection closes.
            self.final = True
            active = self.active
            if active is not None and active.upgrade is not None and not active.finished:
                self.upgrade_rest = data[exc.args[0]:] if exc.args else b""
                self.pause_reading("upgrade")
        except httptools.HttpParserError as exc:
            if self.final:
                # Bytes after the last request (RFC 9112 9.6): answer the request
                # already read, then close; the rest is dropped.
                return
            if isinstance(exc, httptools.HttpParserInvalidMethodError) \
                    and not marks & 1 and self.marks == marks + 1 \
                    and self.extension_method(data, marks):
                return
            if isinstance(exc.__context__, _HeadTooLarge) or self.head_bytes > MAX_HEAD_BYTES:
                self.protocol_error(431, "headers_too_large",
                                    f"request head exceeds {MAX_HEAD_BYTES} bytes")
            else:
                self.protocol_error(400, "bad_request", f"malformed HTTP request: {exc}")

    def extension_method(self, data: bytes, marks: int) -> bool:
        """A method llhttp does not know at the start of this read, the parser having
        been between requests: forwarded if it is a token (RFC 9110 9.1: method = token;
        an intermediary passes on methods it does not know, as nginx). The request is
        parsed again with a placeholder method, the real one put back on its head.
        Pipelined behind another request in the same read it stays a 400."""
        token, space, rest = data.lstrip(b"\r\n").partition(b" ")
        if not space or len(token) > MAX_METHOD_BYTES or not rh.valid_method(token):
            return False
        self.parser = httptools.HttpRequestParser(self)
        self.marks = marks
        self.method_override = token
        self.data_received(_PLACEHOLDER_METHOD + b" " + rest)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        for exchange in (self.active, *self.pending):
            if exchange is not None and not exchange.finished:
                conn, exchange.conn = exchange.conn, None
                if conn is not None:
                    conn.exchange = None
                    conn.abort()
                exchange.finish()
        self.pending.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.write_paused_at = self.server.loop.time()
        active = self.active
        if active is not None and active.conn is not None and active.conn.transport:
            active.conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        active = self.active
        if active is not None and active.conn is not None and active.conn.transport:
            # The client took data: progress. The upstream's timer starts again.
            active.last_activity = self.server.loop.time()
            active.conn.transport.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.marks += 1  # odd while a request is being parsed
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.head_since = self.server.loop.time()

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge  # stops the parser: nothing more is buffered
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge
        if self.current is None:  # else a trailer (after a chunked body): never a header
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        method = parser.get_method()
        if self.method_override is not None:  # an extension method (see extension_method)
            method, self.method_override = self.method_override, None
        exchange = Exchange(self, method, self.url, self.headers, keep_alive)
        # HTTP/1.0 or not (no chunked answers, keep-alive said out loud) costs a string
        # format in httptools; a 1.0 request is never kept alive without a Connection
        # header, so a kept-alive request without one is 1.1 and needs no asking.
        if exchange.has_connection or not keep_alive or exchange.host is None:
            self.check_version(exchange, parser.get_http_version())
        self.current = exchange
        if parser.should_upgrade():
            exchange.keep_alive = False
            exchange.upgrade = rh.websocket_upgrade(method, self.headers)
        if self.head_bytes > MAX_HEAD_BYTES:
            exchange.keep_alive = False
            self.head_since = 0.0
            if self.active is None:
                self.active = exchange
                exchange.respond_error(431, "headers_too_large",
                                       f"request head exceeds {MAX_HEAD_BYTES} bytes")
            return
        self.head_since = 0.0
        if self.active is None:
            self.active = exchange
            self.server.start(exchange)
        else:
            self.pending.append(exchange)
            self.pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.on_body(body)

    def on_message_complete(self) -> None:
        self.marks += 1
        current = self.current
        if current is not None:
            current.on_body_end()
            self.current = None
            if not current.keep_alive:
                self.final = True

    @staticmethod
    def check_version(exchange: Exchange, version: str) -> None:
        """What the HTTP version changes (asked only when a head is unusual: a
        Connection header, no keep-alive, no Host)."""
        exchange.http10 = http10 = version == "1.0"
        if not http10 and version != "1.1":
            status, message = rh.version_refusal(version)
            exchange.refusal = (status, "bad_request" if status == 400
                                else "version_not_supported", message, ())
            exchange.keep_alive = False
        elif exchange.host is None and not http10:  # RFC 9112 3.2
            exchange.refusal = (400, "bad_request", "HTTP/1.1 request without Host", ())
        elif http10 and exchange.chunked_in:  # RFC 9112 6.1: chunked needs 1.1
            exchange.refusal = (400, "bad_request",
                                "Transfer-Encoding in an HTTP/1.0 request", ())
            exchange.keep_alive = False

    # -- exchanges ----------------------------------------------------------------------

    def exchange_done(self, exchange: Exchange) -> None:
        if exchange is not self.active:
            return
        self.active = None
        if self.closing:
            return
        if self.pending:
            self.active = self.pending.popleft()
            if not self.pending:
                self.resume_reading("pipeline")
            self.server.start(self.active)
        else:
            self.idle_since = self.server.loop.time()

    def write(self, data: bytes) -> None:
        if not self.closing and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if self.current is not None and transport.can_write_eof():
            # The client is still sending a body we refused. Closing now would make
            # its kernel answer our 413 with a reset it may read before the answer;
            # instead stop writing, read and drop what arrives, and close shortly.
            transport.write_eof()
            self.paused_for.clear()
            transport.resume_reading()
            self.linger_until = self.server.loop.time() + LINGER_SECONDS
            return
        transport.close()

    def protocol_error(self, status: int, error: str, message: str) -> None:
        current, active = self.current, self.active
        self.current = None  # the parser stopped; no more of this request will come
        if active is not None and active is current and not active.finished:
            active.protocol_error(status, error, message)
            return
        if active is None and not self.closing:
            body = h.json_response(status, error, message, keep_alive=False,
                                   extra=(self.server.date.line,))
            self.write(body)
        self.close()

    def pause_reading(self, reason: str) -> None:
        if not self.paused_for and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.paused_for.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self.paused_for:
            self.paused_for.discard(reason)
            if not self.paused_for and self.transport is not None and not self.closing:
                self.transport.resume_reading()
                if self.current is not None:  # time spent paused by us is not a stall
                    self.current.body_activity = self.server.loop.time()

    # -- deadlines (checked by ProxyServer.sweep) ---------------------------------------

    def check_deadlines(self, now: float) -> None:
        if self.closing:
            if self.linger_until and now >= self.linger_until and self.transport is not None:
                self.transport.close()  # end of a lingering close
            return
        if self.active is not None:
            return
        server = self.server
        if self.head_since:
            if now - self.head_since >= server.head_timeout:
                self.protocol_error(408, "request_timeout", "request head not received in time")
        elif now - self.idle_since >= server.keepalive_timeout:
            self.close()  # idle keep-alive connection
