"""The proxy's HTTP/1.1 server, written on asyncio protocols and httptools.

A plain aiohttp proxy costs about 357 us of CPU per request; this layer keeps the
per-request work to parsing, one task, and a few writes. It knows nothing about keys
or limits: it parses, asks the Gateway for an Admission, then either answers or
streams the exchange to the upstream and back. Its parts:

    request_head.py  checks on a request head, pure (Host, versions, X-Request-Id, Date)
    exchange.py      one request and its response (Exchange)
    connection.py    one client connection: parsing, pipelining, flow control, deadlines
    recorder.py      metrics and the event of a finished exchange
    upstream.py      the upstream connections and their pool
    http_server.py   what every connection shares (ProxyServer): timeouts, the sweep

Timeouts are inactivity, each direction on its own (see ``Exchange.check_timeout``).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Callable

from rateguard.proxy import request_head as rh
from rateguard.proxy.connection import (  # noqa: F401  (re-exported)
    LINGER_SECONDS, MAX_HEAD_BYTES, ClientConnection)
from rateguard.proxy.exchange import BODY_BUFFER_BYTES, Exchange  # noqa: F401
from rateguard.proxy.gateway import Gateway
from rateguard.proxy.recorder import Recorder
from rateguard.proxy.upstream import UpstreamPool

# Defaults of PROXY_KEEPALIVE_TIMEOUT, PROXY_HEAD_TIMEOUT and PROXY_BODY_TIMEOUT.
KEEPALIVE_SECONDS = 75.0
HEAD_SECONDS = 10.0  # a request head must arrive within this (from the connection or its start)
BODY_SECONDS = 30.0  # longest pause while a client sends a request body
# Longest pause of a client that does not read its response (nginx's send_timeout): a
# reader that takes anything at all within this keeps its download going.
SEND_SECONDS = 120.0
WEBSOCKET_IDLE_SECONDS = 300.0  # a relayed WebSocket silent both ways this long is closed


class ProxyServer(Recorder):
    """Holds what every connection shares and records finished exchanges."""

    def __init__(self, gateway: Gateway, pool: UpstreamPool, *, publish: Callable,
                 metrics, max_body: int, upstream_timeout: float,
                 special_paths: dict[str, Callable[[], tuple[int, bytes]]],
                 head_timeout: float = HEAD_SECONDS, keepalive_timeout: float = KEEPALIVE_SECONDS,
                 body_timeout: float = BODY_SECONDS, trusted_proxies: tuple = (),
                 busy_poll_us: int = 0, send_timeout: float = SEND_SECONDS,
                 websocket_idle: float = WEBSOCKET_IDLE_SECONDS) -> None:
        self.trusted_proxies = trusted_proxies
        self.websocket_idle = websocket_idle
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

    def websockets_open(self) -> int:
        """WebSocket connections being relayed (for the metric; counted when scraped)."""
        from rateguard.proxy.relay import Relay
        return sum(1 for exchange in self.exchanges if isinstance(exchange, Relay))

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
