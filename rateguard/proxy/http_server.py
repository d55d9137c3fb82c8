"""The proxy's HTTP/1.1 server, written on asyncio protocols and httptools.

A plain aiohttp proxy costs about 357 us of CPU per request; this layer keeps the
per-request work to parsing, one task, and a few writes. It knows nothing about keys
or limits: it parses, asks the Gateway for an Admission, then either answers or
streams the exchange to the upstream and back.

Flow control both ways: a full upstream socket pauses reading from the client, a
full client socket pauses reading from the upstream, so a 10 MB body never sits in
memory whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from typing import Callable

import httptools

from rateguard.proxy import headers as h
from rateguard.proxy import request_head as rh
from rateguard.proxy.client_address import client_address, is_trusted
from rateguard.proxy.client_address import forwarded_proto as forwarded_proto_of
from rateguard.proxy.gateway import Admission, Gateway
from rateguard.proxy.upstream import UpstreamConnectError, UpstreamConnection, UpstreamPool

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 32 * 1024
BODY_BUFFER_BYTES = 256 * 1024  # request body held while the limiter decides
# Defaults of PROXY_KEEPALIVE_TIMEOUT, PROXY_HEAD_TIMEOUT and PROXY_BODY_TIMEOUT.
KEEPALIVE_SECONDS = 75.0
HEAD_SECONDS = 10.0  # a request head must arrive within this (from the connection or its start)
BODY_SECONDS = 30.0  # longest pause while a client sends a request body
LINGER_SECONDS = 2.0  # reading and dropping a refused body before closing
# Longest pause of a client that does not read its response (nginx's send_timeout): a
# reader that takes anything at all within this keeps its download going.
SEND_SECONDS = 120.0


class _HeadTooLarge(Exception):
    pass


def _content_length(value: bytes) -> int:
    """Digits only (``int`` would also take ``+5``, `` 5`` and ``5_0``); -1 when invalid."""
    value = value.strip()
    return int(value) if value.isdigit() else -1

_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}
_CHUNKED = b"transfer-encoding: chunked\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_AUTHORIZATION = frozenset({b"authorization"})
# Parsed in place of a method llhttp does not know (no framing of its own in llhttp).
_PLACEHOLDER_METHOD = b"PROPFIND"
MAX_METHOD_BYTES = 64
_FORWARDED = frozenset({b"forwarded"})


class Exchange:
    """One request and its response."""

    __slots__ = (
        "client", "server", "method", "target", "headers", "keep_alive", "http10",
        "request_id", "started", "ts_ms", "body_chunks", "body_buffered", "body_done",
        "bytes_in", "bytes_out", "chunked_in", "content_length", "max_body", "conn",
        "admission", "response_started", "response_chunked", "response_done", "status",
        "upstream_started", "upstream_ms", "last_activity", "timeout", "reused",
        "finished", "out", "host", "authorization", "x_api_key", "user_agent", "expect",
        "head_only", "error_decision", "sent_body", "close_delimited", "client_ip", "proto",
        "body_activity", "refusal", "path", "query", "has_connection",
    )

    def __init__(self, client: "ClientConnection", method: bytes, target: bytes,
                 headers: list, keep_alive: bool) -> None:
        self.client = client
        # The target split once: the path (routing, events) and "?query" (kept as is).
        raw_path, sep, query = target.partition(b"?")
        self.path = raw_path.decode("latin-1")
        self.query = sep + query
        self.server = server = client.server
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.http10 = False  # set by the connection when the request may be HTTP/1.0
        self.started = time.perf_counter()
        self.ts_ms = int(time.time() * 1000)
        self.body_chunks: list[bytes] = []
        self.body_buffered = 0
        self.body_done = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.chunked_in = False
        self.content_length: int | None = None
        self.max_body = server.max_body
        self.conn: UpstreamConnection | None = None
        self.admission: Admission | None = None
        self.response_started = False
        self.response_chunked = False
        self.response_done = False
        self.status = 0
        self.upstream_started = 0.0
        self.upstream_ms = 0.0
        self.last_activity = 0.0
        self.timeout = server.upstream_timeout
        self.reused = False
        self.finished = False
        self.out: list[bytes] = []
        self.head_only = method == b"HEAD"
        self.error_decision = None
        self.sent_body = False
        self.close_delimited = False
        self.body_activity = server.loop.time()
        # (status, error, message, extra lines): the request is answered by the proxy
        # without routing (a malformed head, a refused method).
        self.refusal = None
        host = authorization = x_api_key = user_agent = expect = request_id = None
        forwarded_for = forwarded_proto = None
        has_connection = False
        for name, value in headers:
            if name == b"host":
                if host is not None:
                    self.refusal = (400, "bad_request", "more than one Host header", ())
                host = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                x_api_key = value
            elif name == b"user-agent":
                user_agent = value
            elif name == b"content-length":
                self.content_length = length = _content_length(value)
                if length < 0:
                    self.refusal = (400, "bad_request", "invalid Content-Length", ())
            elif name == b"transfer-encoding":
                # chunked only when it is the final coding (RFC 9112 6.3); the parser
                # refuses anything else before the body is read.
                self.chunked_in = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif name == b"expect":
                expect = value
            elif name == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b"," + value
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
            elif name == b"connection":
                has_connection = True
            elif name == b"x-request-id":
                request_id = value
        self.has_connection = has_connection
        # A client's well-formed X-Request-Id is kept (and passed on, and answered).
        if request_id is not None and rh.valid_request_id(request_id):
            self.request_id = request_id.decode("ascii")
        else:
            self.request_id = server.next_request_id()
        # RFC 9112 3.2: an invalid Host is 400. A connection sends the same one request
        # after request: the last valid value is remembered.
        if host is not None and host != client.valid_host:
            if rh.valid_host(host):
                client.valid_host = host
            else:
                self.refusal = (400, "bad_request", "invalid Host header", ())
        if "%" in self.path and rh.overlong_utf8(self.path):
            self.refusal = (400, "bad_request", "path is not allowed", ())
        if method == b"TRACE":  # RFC 9110 9.3.8: it would echo cookies and credentials
            self.refusal = (405, "method_not_allowed", "TRACE is not forwarded",
                            (rh.ALLOW_LINE,))
        trusted = server.trusted_proxies
        if trusted:
            self.client_ip = client_address(client.client_ip, forwarded_for, trusted)
            self.proto = forwarded_proto_of(client.client_ip, forwarded_proto, trusted)
        else:
            self.client_ip = client.client_ip
            self.proto = b"http"
        self.host = host
        self.authorization = authorization
        self.x_api_key = x_api_key
        self.user_agent = user_agent
        self.expect = expect

    # -- request body from the client ---------------------------------------------------

    def on_body(self, chunk: bytes) -> None:
        self.body_activity = self.server.loop.time()
        self.bytes_in += len(chunk)
        if self.bytes_in > self.max_body:
            self.body_too_large()
            return
        conn = self.conn
        if conn is not None and self.sent_body:
            conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if self.chunked_in else chunk)
        elif not self.finished:
            self.body_chunks.append(chunk)
            self.body_buffered += len(chunk)
            if self.body_buffered > BODY_BUFFER_BYTES:
                self.client.pause_reading("buffer")

    def on_body_end(self) -> None:
        self.body_done = True
        conn = self.conn
        if conn is not None and self.sent_body:
            if self.chunked_in:
                conn.write(b"0\r\n\r\n")
            # The request is sent: the upstream's time to answer starts now.
            self.last_activity = self.server.loop.time()

    def body_too_large(self) -> None:
        if self.finished:
            return
        self.keep_alive = False
        self.body_chunks.clear()
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        if not self.response_started:
            self.respond_error(413, "body_too_large",
                               f"request body exceeds {self.max_body} bytes")
        else:
            self.client.close()
            self.finish()

    # -- the request --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except Exception:  # a bug: answer 500 rather than hang the client
            log.exception("proxy: unexpected error serving %s", self.target[:200])
            if not self.finished:
                if self.response_started:
                    self.client.close()
                    self.finish()
                else:
                    self.respond_error(500, "internal_error", "the gateway failed")

    async def _run(self) -> None:
        server = self.server
        path = self.path
        special = server.special_paths.get(path)
        if special is not None:
            status, body = special()
            self.write_simple(status, body)
            return
        if self.refusal is not None:
            status, error, message, extra = self.refusal
            self.keep_alive = False
            self.respond_error(status, error, message, extra=extra)
            return
        client_ip = self.client_ip
        admission = self.admission = await server.gateway.admit(
            self.host, path, self.authorization, self.x_api_key, client_ip)
        if self.finished:  # the client went away or the body was refused meanwhile
            return
        if admission.status:
            extra = admission.lines or []
            self.respond_error(admission.status, admission.error, admission.message,
                               extra=extra)
            return
        api = admission.api
        if api.max_body_bytes is not None:
            self.max_body = api.max_body_bytes
        if api.timeout is not None:
            self.timeout = api.timeout
        if self.content_length is not None and self.content_length > self.max_body:
            self.keep_alive = False
            self.respond_error(413, "body_too_large",
                               f"request body exceeds {self.max_body} bytes")
            return
        if self.bytes_in > self.max_body:
            self.body_too_large()
            return
        await self.forward(admission)

    async def forward(self, admission: Admission) -> None:
        server = self.server
        api = admission.api
        upstream = api.upstream
        loop = server.loop
        conn = server.pool.take_idle(upstream, loop.time())
        self.reused = conn is not None
        if conn is None:
            try:
                conn = await server.pool.connect(upstream)
            except UpstreamConnectError as exc:
                if not self.finished:
                    if exc.timeout:
                        self.respond_error(504, "upstream_timeout", str(exc))
                    else:
                        self.respond_error(502, "upstream_unavailable", str(exc))
                return
            if self.finished:
                conn.abort()
                return
        self.send_request(conn, admission)

    def send_request(self, conn: UpstreamConnection, admission: Admission) -> None:
        api = admission.api
        self.conn = conn
        conn.exchange = self
        target = admission.upstream_path.encode("latin-1") + self.query
        if self.chunked_in:
            framing = _CHUNKED
        elif self.content_length is not None:  # Content-Length: 0 too (a POST says it)
            framing = b"content-length: %d\r\n" % self.content_length
        else:
            framing = b""
        client = self.client
        # Names not forwarded beyond the hop-by-hop ones (per connection, no set built
        # per request): Forwarded from untrusted peers, the API key's Authorization.
        if self.has_connection:
            drop = h.connection_tokens(self.headers) | client.drop
            if admission.drop_authorization:
                drop = drop | _AUTHORIZATION
        else:
            drop = client.drop_key if admission.drop_authorization else client.drop
        proto = self.proto
        hop = client.hop if proto == b"http" else h.forwarding_hop(client.client_ip_bytes, proto)
        head = h.upstream_request_head(
            self.method, target, self.headers, host=api.upstream.host_header,
            original_host=self.host, request_id=self.request_id.encode(), framing=framing,
            drop=drop, extra=api.upstream_headers, hop=hop)
        if self.expect is not None and self.expect.lower() == b"100-continue" \
                and not self.body_done and not self.http10:
            self.client.write(_CONTINUE)
        parts = [head]
        if self.chunked_in:
            for chunk in self.body_chunks:
                parts.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if self.body_done:
                parts.append(b"0\r\n\r\n")
        else:
            parts += self.body_chunks
        self.body_chunks = []
        self.body_buffered = 0
        self.sent_body = True
        self.client.resume_reading("buffer")
        conn.write(parts[0] if len(parts) == 1 else b"".join(parts))
        server = self.server
        # loop.time() (uvloop: libuv's millisecond clock) for the timeout sweep; the
        # upstream's time for events and metrics needs the microsecond clock.
        self.last_activity = server.loop.time()
        self.upstream_started = time.perf_counter()
        if server.busy_poll:
            server.poll_for_answers()

    def check_timeout(self, now: float) -> None:
        """Called by the server's sweep. Every timeout is inactivity in one direction,
        so a long transfer that makes progress is never cut:

        * the client sending its body: a pause of ``body_timeout`` -> 408;
        * the upstream reading that body (its socket full): no drain for ``timeout`` -> 504;
        * the upstream answering: ``timeout`` from the request sent (or its last response
          bytes) to the next response bytes -> 504, or a cut connection if the response
          already started;
        * the client reading the response (its socket full, the upstream paused): no
          drain for ``send_timeout`` -> the connection is cut. The upstream's timer does
          not run meanwhile."""
        if self.finished or self.response_done:
            return
        client = self.client
        if not self.body_done and not client.paused_for \
                and now - self.body_activity >= self.server.body_timeout:
            self.client_stalled()
            return
        conn = self.conn
        if conn is None:
            return
        if conn.paused_at:  # the upstream does not take the request body
            if now - conn.paused_at >= self.timeout:
                self.fail(504, "upstream_timeout",
                          f"upstream stopped reading the request for {self.timeout:g}s")
            return
        if not self.body_done and not self.response_started:
            return  # the request is still arriving; the client's timeout applies
        if client.writing_paused:  # a slow reader; the upstream waits for it
            if now - client.write_paused_at >= self.server.send_timeout:
                self.fail(504, "client_timeout", "client stopped reading")
            return
        if now - self.last_activity < self.timeout:
            return
        self.fail(504, "upstream_timeout", f"upstream did not answer within {self.timeout:g}s")

    def client_stalled(self) -> None:
        self.keep_alive = False
        self.fail(408, "request_timeout",
                  f"request body stalled for {self.server.body_timeout:g}s")

    def protocol_error(self, status: int, error: str, message: str) -> None:
        """The request turned out malformed after its head (e.g. broken chunked
        encoding)."""
        if self.finished:
            return
        self.keep_alive = False
        self.fail(status, error, message)

    def fail(self, status: int, error: str, message: str) -> None:
        """End the exchange with the gateway's own error: drop the upstream connection,
        then answer ``status`` if nothing was sent yet, else cut the client connection
        (a response already under way cannot change its status)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            conn.abort()
        if self.response_started:
            self.client.close()
            self.finish()
        else:
            self.respond_error(status, error, message)

    # -- the response from the upstream ------------------------------------------------

    def on_response_head(self, status: int, reason: bytes, headers: list) -> None:
        self.last_activity = self.server.loop.time()
        self.upstream_ms = (time.perf_counter() - self.upstream_started) * 1000.0
        self.status = status
        self.response_started = True
        content_length = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                content_length = value
            elif name == b"transfer-encoding":
                chunked = True
        no_body = self.head_only or status in (204, 304)
        self.close_delimited = not no_body and content_length is None and not chunked
        if no_body:
            framing = b"content-length: %s\r\n" % content_length if content_length else b""
        elif content_length is not None and not chunked:
            framing = b"content-length: %s\r\n" % content_length
        elif self.http10:
            framing = b""
            self.keep_alive = False  # close-delimited
        else:
            framing = _CHUNKED
            self.response_chunked = True
        if not self.body_done:
            self.keep_alive = False  # the client's body is still arriving
        extra = self.response_lines()
        self.out.append(h.client_response_head(
            status, reason, headers, extra=extra, framing=framing,
            keep_alive=self.keep_alive and not self.client.closing, http10=self.http10))
        if self.head_only:
            # A response to HEAD has no body whatever its headers say; the parser
            # cannot know that, so this connection is not reused.
            self.flush()
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.exchange = None
                conn.abort()
            self.complete(False)

    def response_lines(self) -> list[bytes]:
        lines = [self.server.date.line_via,
                 b"x-request-id: " + self.request_id.encode() + b"\r\n"]
        admission = self.admission
        if admission is not None and admission.lines:
            lines += admission.lines
        return lines

    def on_response_body(self, chunk: bytes) -> None:
        if self.head_only or self.finished:
            return
        self.bytes_out += len(chunk)
        if self.response_chunked:
            self.out.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.out.append(chunk)
        self.last_activity = self.server.loop.time()

    def on_response_end(self, upstream_keep_alive: bool) -> None:
        if self.finished:
            return
        if self.response_chunked:
            self.out.append(b"0\r\n\r\n")
        self.flush()
        self.complete(upstream_keep_alive and self.body_done)

    def flush(self) -> None:
        out = self.out
        if out:
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def complete(self, reuse_upstream: bool) -> None:
        conn, self.conn = self.conn, None
        self.response_done = True
        if conn is not None:
            if reuse_upstream:
                self.server.pool.release(conn, self.server.loop.time())
            else:
                conn.exchange = None
                conn.abort()
        if not self.keep_alive:
            self.client.close()
        self.finish()

    def on_upstream_error(self, message: str) -> None:
        self.fail(502, "bad_gateway", message)

    def on_upstream_lost(self, conn: UpstreamConnection) -> None:
        if self.finished or conn is not self.conn:
            return
        self.conn = None
        if self.response_started:
            if self.close_delimited:  # the upstream's close is the end of its body
                self.on_response_end(False)
            else:  # a truncated response: the client must see it cut, not complete
                self.flush()
                self.client.close()
                self.finish()
            return
        if self.reused and not conn.received and self.bytes_in == 0 and self.body_done \
                and self.admission:
            # A kept-alive connection the upstream had just closed before answering:
            # send the request again on a fresh one. Only bodyless requests, whose
            # bytes are all in hand; a streamed body is gone once sent.
            self.server.loop.create_task(self._retry())
            return
        self.respond_error(502, "bad_gateway", "upstream closed the connection")

    async def _retry(self) -> None:
        try:
            conn = await self.server.pool.connect(self.admission.api.upstream)
        except UpstreamConnectError as exc:
            if not self.finished:
                self.respond_error(502, "upstream_unavailable", str(exc))
            return
        if self.finished:
            conn.abort()
            return
        self.reused = False
        self.sent_body = False
        self.send_request(conn, self.admission)

    # -- answers from the proxy itself --------------------------------------------------

    def respond_error(self, status: int, error: str, message: str, extra=()) -> None:
        if self.finished:
            return
        if not self.body_done:
            self.keep_alive = False
        lines = [self.server.date.line, b"x-request-id: " + self.request_id.encode() + b"\r\n",
                 *extra]
        self.status = status
        self.client.write(h.json_response(
            status, error, message, extra=lines, keep_alive=self.keep_alive,
            head_only=self.head_only, request_id=self.request_id))
        if self.admission is None or not self.admission.status:
            self.error_decision = "error"  # the gateway failed it, not a policy
        if not self.keep_alive:
            self.client.close()
        self.finish()

    def write_simple(self, status: int, body: bytes) -> None:
        self.status = status
        self.client.write(
            b"HTTP/1.1 %d %s\r\n%scontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, h.REASONS.get(status, b""), self.server.date.line, len(body), body))
        self.error_decision = "special"
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.status == 0:
            self.status = 499  # the client closed the request
            self.error_decision = "error"
        self.server.record(self)
        self.client.exchange_done(self)


class ClientConnection(asyncio.Protocol):
    """One client TCP connection; requests on it are answered in order."""

    __slots__ = ("server", "transport", "parser", "client_ip", "client_ip_bytes", "url",
                 "headers", "head_bytes", "current", "active", "pending", "paused_for",
                 "closing", "writing_paused", "idle_since", "head_since", "linger_until",
                 "hop", "drop", "drop_key", "write_paused_at", "final", "valid_host",
                 "marks", "method_override")

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
        except httptools.HttpParserUpgrade:
            pass  # upgrades are not proxied: the request is answered, then we close
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


class ProxyServer:
    """Holds what every connection shares and records finished exchanges."""

    def __init__(self, gateway: Gateway, pool: UpstreamPool, *, publish: Callable,
                 metrics, max_body: int, upstream_timeout: float,
                 special_paths: dict[str, Callable[[], tuple[int, bytes]]],
                 head_timeout: float = HEAD_SECONDS, keepalive_timeout: float = KEEPALIVE_SECONDS,
                 body_timeout: float = BODY_SECONDS, trusted_proxies: tuple = (),
                 busy_poll_us: int = 0, send_timeout: float = SEND_SECONDS) -> None:
        self.trusted_proxies = trusted_proxies
        self.send_timeout = send_timeout
        self.date = rh.DateLine()  # refreshed by the sweep
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.body_timeout = body_timeout
        self.gateway = gateway
        self.pool = pool
        self.publish = publish
        self.metrics = metrics
        self.max_body = max_body
        self.upstream_timeout = upstream_timeout
        self.special_paths = special_paths
        self.connections: set[ClientConnection] = set()
        self.exchanges: set[Exchange] = set()
        self.inflight = 0
        self.loop = asyncio.get_event_loop()
        self._id_prefix = os.urandom(6).hex()
        self._id_counter = 0
        self.busy_poll = busy_poll_us / 1e6  # seconds; 0: off (PROXY_BUSY_POLL_US)
        self._poll_until = 0.0
        self._polling = False

    def protocol(self) -> ClientConnection:
        return ClientConnection(self)

    def next_request_id(self) -> str:
        self._id_counter += 1
        return f"{self._id_prefix}{self._id_counter:010x}"

    def start(self, exchange: Exchange) -> None:
        self.inflight += 1
        self.exchanges.add(exchange)
        if self.busy_poll:
            self.poll_for_answers()
        # A Task, not a hand-stepped coroutine: code under the admission (redis-py's
        # cluster client, asyncio.timeout, wait_for on Python 3.12+) needs a current
        # task. Its first step runs on the next iteration, after the parser has fed
        # the rest of this read (the end of a bodyless request, pipelined requests).
        self.loop.create_task(exchange.run())

    def poll_for_answers(self) -> None:
        """PROXY_BUSY_POLL_US: for that long (from now), while requests are in flight,
        a callback runs on every loop iteration, so the loop asks epoll without blocking
        and the core never idles while Redis's or the upstream's answer is on its way.
        On a VM a halted core takes tens of microseconds to wake: less latency at low
        load, for CPU. Under full load the loop never waits anyway."""
        self._poll_until = time.perf_counter() + self.busy_poll
        if not self._polling:
            self._polling = True
            self.loop.call_soon(self._poll)

    def _poll(self) -> None:
        if self.inflight and time.perf_counter() < self._poll_until:
            self.loop.call_soon(self._poll)
        else:
            self._polling = False

    def sweep(self, interval: float = 0.1) -> asyncio.Task:
        """One periodic task checks every deadline (upstream timeouts each
        ``interval``, connection timeouts each second) instead of a timer per request."""
        async def run() -> None:
            ticks = 0
            while True:
                await asyncio.sleep(interval)
                self.date.refresh()
                now = self.loop.time()
                for exchange in list(self.exchanges):
                    exchange.check_timeout(now)
                ticks += 1
                if ticks % 10 == 0:
                    for conn in list(self.connections):
                        conn.check_deadlines(now)
        return self.loop.create_task(run())

    def record(self, exchange: Exchange) -> None:
        self.inflight -= 1
        self.exchanges.discard(exchange)
        if exchange.error_decision == "special":
            return  # health checks are not traffic
        admission = exchange.admission
        latency = time.perf_counter() - exchange.started
        api = admission.api if admission is not None else None
        status = exchange.status
        decision = exchange.error_decision or (admission.decision if admission else "error")
        metrics = self.metrics
        if metrics is not None:
            by_class, latency_hist, upstream_hist = metrics.for_api(api.id if api else "")
            child = by_class.get(_STATUS_CLASS.get(status // 100))
            if child is not None:
                child.inc()
            latency_hist.observe(latency)
            metrics.by_decision[decision].inc()
            if exchange.upstream_ms:
                upstream_hist.observe(exchange.upstream_ms / 1000.0)
        self.publish(self.gateway.event(
            exchange.request_id, exchange.ts_ms, admission,
            exchange.method.decode("latin-1"),
            (exchange.host or b"").decode("latin-1"), exchange.path,
            status, latency * 1000.0, exchange.upstream_ms, exchange.bytes_in,
            exchange.bytes_out, exchange.client_ip,
            (exchange.user_agent or b"").decode("latin-1")[:512], decision))
