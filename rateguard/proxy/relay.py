"""WebSocket relay: after the upstream's ``101``, bytes both ways between the client and
the upstream connection, with flow control, an idle timeout and a clean close on drain.

The handshake went through routing, key auth and the limiter like any request (a refused
one is an ordinary 401/429 answer). Then both transports are handed to the two sides of
a ``Relay`` (``transport.set_protocol``): a full socket on one side pauses reading on the
other, so a slow consumer holds its producer back instead of filling memory. Frames are
not decoded, only their boundaries followed (RFC 6455 5.2), to learn the close code and
to inject a close frame (1001 "going away") between frames when the proxy drains.

The relay is checked by the server's sweep like an exchange (``check_timeout``); when it
ends, its exchange finishes and is recorded as one event: duration, bytes each way,
status 101; the close code is logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rateguard.proxy.connection import ClientConnection
    from rateguard.proxy.exchange import Exchange
    from rateguard.proxy.upstream import UpstreamConnection

log = logging.getLogger("rateguard.proxy.relay")

IDLE_SECONDS = 300.0  # a WebSocket with no byte either way for this long is closed
GOING_AWAY = 1001
DRAIN_GRACE_SECONDS = 2.0  # after close frames on drain, the peers' own closes


class FrameTracker:
    """Follows frame boundaries in one direction (RFC 6455 5.2) without copying
    payloads: ``at_boundary`` says a frame may be injected now; ``close_code`` is the
    code of the last close frame seen (None before any)."""

    __slots__ = ("remaining", "header", "close_code", "_close_payload", "_mask", "_offset")

    def __init__(self) -> None:
        self.remaining = 0  # payload bytes of the current frame still to come
        self.header = b""  # a frame header split across reads
        self.close_code: int | None = None
        self._close_payload: bytearray | None = None  # first payload bytes of a close frame
        self._mask = b""
        self._offset = 0

    @property
    def at_boundary(self) -> bool:
        return self.remaining == 0 and not self.header

    def feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos < size:
            if self.remaining:
                take = min(self.remaining, size - pos)
                if self._close_payload is not None:
                    self._collect(data[pos:pos + take])
                self.remaining -= take
                pos += take
                continue
            header = self.header + data[pos:pos + 14]
            length = self._header_length(header)
            if length is None or len(header) < length:  # incomplete: wait for more
                self.header = header
                return
            pos += length - len(self.header)
            self.header = b""
            self._start(header[:length])

    @staticmethod
    def _header_length(header: bytes) -> int | None:
        if len(header) < 2:
            return None
        size = header[1] & 0x7F
        extra = 2 if size == 126 else 8 if size == 127 else 0
        return 2 + extra + (4 if header[1] & 0x80 else 0)

    def _start(self, header: bytes) -> None:
        size = header[1] & 0x7F
        at = 2
        if size == 126:
            size, at = struct.unpack_from("!H", header, 2)[0], 4
        elif size == 127:
            size, at = struct.unpack_from("!Q", header, 2)[0], 10
        self._mask = header[at:at + 4] if header[1] & 0x80 else b""
        self._offset = 0
        self.remaining = size
        if header[0] & 0x0F == 0x8:  # close
            self._close_payload = bytearray()
            if size == 0:
                self.close_code, self._close_payload = 1005, None  # no status received
        else:
            self._close_payload = None

    def _collect(self, piece: bytes) -> None:
        payload = self._close_payload
        assert payload is not None
        for byte in piece[: 2 - len(payload)]:
            mask = self._mask
            payload.append(byte ^ mask[self._offset % 4] if mask else byte)
            self._offset += 1
        if len(payload) >= 2:
            self.close_code = struct.unpack("!H", bytes(payload[:2]))[0]
            self._close_payload = None


def close_frame(code: int, *, masked: bool) -> bytes:
    """A close frame with ``code``; masked when sent as a client (to the upstream)."""
    payload = struct.pack("!H", code)
    if not masked:
        return b"\x88\x02" + payload
    key = os.urandom(4)
    return b"\x88\x82" + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class _Side(asyncio.Protocol):
    """One transport of the relay: what it receives goes out on the other one."""

    __slots__ = ("relay", "out", "tracker", "downstream")

    def __init__(self, relay: "Relay", out: asyncio.Transport, downstream: bool) -> None:
        self.relay = relay
        self.out = out
        self.tracker = FrameTracker()
        self.downstream = downstream  # True: receives from the upstream, for the client

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        relay.last = relay.loop.time()
        if self.downstream:
            relay.bytes_down += len(data)
        else:
            relay.bytes_up += len(data)
        self.tracker.feed(data)
        if not relay.closed:
            self.out.write(data)

    def eof_received(self) -> bool:
        self.relay.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()

    # Our transport's buffer is full: stop reading the other one, which feeds it.
    def pause_writing(self) -> None:
        self.out.pause_reading()

    def resume_writing(self) -> None:
        self.out.resume_reading()


class Relay:
    """A WebSocket connection being relayed; registered with the server's sweep."""

    __slots__ = ("exchange", "client", "upstream", "loop", "last", "bytes_up", "bytes_down",
                 "closed", "idle", "up_side", "down_side", "draining_since", "started")

    def __init__(self, exchange: "Exchange", client: "ClientConnection",
                 upstream: "UpstreamConnection", idle: float = IDLE_SECONDS) -> None:
        self.exchange = exchange
        self.client = client
        self.upstream = upstream
        self.loop = exchange.server.loop
        self.last = self.started = self.loop.time()
        self.bytes_up = self.bytes_down = 0
        self.closed = False
        self.idle = idle
        self.draining_since = 0.0
        client_transport, upstream_transport = client.transport, upstream.transport
        assert client_transport is not None and upstream_transport is not None
        self.up_side = _Side(self, upstream_transport, downstream=False)  # on the client's
        self.down_side = _Side(self, client_transport, downstream=True)  # on the upstream's

    def start(self, to_client: bytes, to_upstream: bytes) -> None:
        """Take both transports over; ``to_client``/``to_upstream`` are bytes already
        read past the handshake on either side."""
        self.client.transport.set_protocol(self.up_side)
        self.upstream.transport.set_protocol(self.down_side)
        if to_client:
            self.down_side.data_received(to_client)
        if to_upstream:
            self.up_side.data_received(to_upstream)
        self.client.transport.resume_reading()
        self.upstream.transport.resume_reading()

    def check_timeout(self, now: float) -> None:
        """From the server's sweep: the idle timeout, and the drain (the app marks every
        active exchange ``keep_alive = False`` when SIGTERM arrives)."""
        if self.closed:
            return
        if now - self.last >= self.idle:
            log.info("websocket %s idle for %gs: closed", self.exchange.request_id, self.idle)
            self.go_away(now)
            return
        if not self.exchange.keep_alive:
            self.go_away(now)

    def go_away(self, now: float) -> None:
        """Close frames (1001) to both peers between frames, then the connection."""
        if not self.draining_since:
            self.draining_since = now
        up, down = self.up_side, self.down_side
        if (up.tracker.at_boundary and down.tracker.at_boundary) \
                or now - self.draining_since >= DRAIN_GRACE_SECONDS:
            if up.tracker.at_boundary and down.tracker.at_boundary:
                down.out.write(close_frame(GOING_AWAY, masked=False))
                up.out.write(close_frame(GOING_AWAY, masked=True))
                down.tracker.close_code = down.tracker.close_code or GOING_AWAY
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for transport in (self.client.transport, self.upstream.transport):
            if transport is not None:
                transport.close()  # what is buffered is sent first
        client = self.client
        client.closing = True
        server = self.exchange.server
        server.connections.discard(client)
        server.exchanges.discard(self)
        exchange = self.exchange
        exchange.bytes_in = self.bytes_up
        exchange.bytes_out = self.bytes_down
        code = self.down_side.tracker.close_code or self.up_side.tracker.close_code
        exchange.close_code = code or 0
        log.info("websocket %s closed after %.1fs (code %s, %d bytes up, %d down)",
                 exchange.request_id, self.loop.time() - self.started, code, self.bytes_up,
                 self.bytes_down)
        exchange.response_done = True
        exchange.finish()
