"""One request and its response: the exchange between a client connection and an
upstream connection.

It reads the parsed head once (the headers it needs, what the proxy must refuse), asks
the Gateway for an Admission, then either answers itself or sends the request upstream
and streams the body both ways: request body chunks as the client connection parses
them, response pieces as the upstream connection (``upstream.ResponseSink``) parses them.
Timeouts are checked from the server's sweep (``check_timeout``), each direction's
inactivity on its own.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from rateguard.proxy import headers as h
from rateguard.proxy import request_head as rh
from rateguard.proxy.client_address import client_address
from rateguard.proxy.client_address import forwarded_proto as forwarded_proto_of
from rateguard.proxy.upstream import UpstreamConnectError, UpstreamConnection

if TYPE_CHECKING:
    from rateguard.proxy.connection import ClientConnection
    from rateguard.proxy.gateway import Admission

log = logging.getLogger("rateguard.proxy.http_server")

BODY_BUFFER_BYTES = 256 * 1024  # request body held while the limiter decides


def _content_length(value: bytes) -> int:
    """Digits only (``int`` would also take ``+5``, `` 5`` and ``5_0``); -1 when invalid."""
    value = value.strip()
    return int(value) if value.isdigit() else -1


_CHUNKED = b"transfer-encoding: chunked\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_AUTHORIZATION = frozenset({b"authorization"})


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
        "body_activity", "refusal", "path", "query", "has_connection", "upgrade",
        "close_code",
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
        self.upgrade: bytes | None = None  # "websocket": a handshake (see relay.py)
        self.close_code = 0  # a relayed WebSocket's close code, for its event
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
                if value.strip().lower() != b"chunked":
                    # Only chunked is forwarded as sent; any other coding (gzip, chunked)
                    # would reach the upstream unannounced. RFC 9112 6.1: 501.
                    self.refusal = (501, "not_implemented",
                                    "only the chunked transfer coding is supported", ())
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
        if method in rh.REFUSED_METHODS:  # RFC 9110 9.3.8 TRACE echoes credentials;
            # CONNECT (9.3.6) asks for a tunnel, which a reverse proxy does not make
            self.refusal = (405, "method_not_allowed",
                            f"{method.decode()} is not forwarded", (rh.ALLOW_LINE,))
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
        if self is not self.client.active and self.refusal is None:
            # Pipelined behind a request still being answered: its 413 must wait its
            # turn (answers go in order), and it was never started, so nothing to end.
            self.refusal = (413, "body_too_large",
                            f"request body exceeds {self.max_body} bytes", ())
            self.max_body = -1  # what else arrives of this body is dropped
            return
        if self.refusal is not None and self is not self.client.active:
            return
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
        elif self.upgrade is not None:  # hop-by-hop, so added back for this hop
            framing = b"connection: upgrade\r\nupgrade: " + self.upgrade + b"\r\n"
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
        last = self.last_activity
        if not self.body_done:
            if not self.response_started:
                return  # the request is still arriving; the client's timeout applies
            # An early answer while the body still flows: the upload is progress too.
            last = max(last, self.body_activity)
        if client.writing_paused:  # a slow reader; the upstream waits for it
            if now - client.write_paused_at >= self.server.send_timeout:
                self.fail(504, "client_timeout", "client stopped reading")
            return
        if now - last < self.timeout:
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
        # An upstream that answered before taking the whole body may have paused the
        # client's reading; once released it can no longer resume it.
        self.client.resume_reading("upstream")
        if conn is not None:
            if reuse_upstream:
                self.server.pool.release(conn, self.server.loop.time())
            else:
                conn.exchange = None
                conn.abort()
        if not self.keep_alive:
            self.client.close()
        self.finish()

    def on_switch(self, conn: UpstreamConnection, reason: bytes, headers: list,
                  rest: bytes) -> bool:
        """The upstream answered 101 to our WebSocket handshake: relay both ways
        (relay.py). False when the request did not ask for it (then: 502)."""
        if self.upgrade is None or self.finished or conn is not self.conn:
            return False
        from rateguard.proxy.relay import Relay  # WebSockets only

        server, client = self.server, self.client
        self.upstream_ms = (time.perf_counter() - self.upstream_started) * 1000.0
        self.status = 101
        self.response_started = True
        extra = self.response_lines()
        extra.append(b"connection: upgrade\r\nupgrade: " + self.upgrade + b"\r\n")
        client.write(h.client_response_head(101, reason, headers, extra=extra, framing=b"",
                                            keep_alive=True, http10=False))
        conn.exchange = None
        self.conn = None
        self.keep_alive = True  # the drain sets it False: the relay then says going-away
        relay = Relay(self, client, conn, server.websocket_idle)
        server.exchanges.discard(self)
        server.exchanges.add(relay)
        rest_up, client.upgrade_rest = client.upgrade_rest, b""
        relay.start(rest, rest_up)
        return True

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
