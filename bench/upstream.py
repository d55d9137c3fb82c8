"""A fast HTTP/1.1 keep-alive upstream for the benchmarks.

Every request, whatever its method or path, is answered ``200`` with a fixed body of
``--size`` bytes. It is written on a bare asyncio protocol (uvloop when installed) and
does the least work an HTTP/1.1 server can: find the end of each head, skip a
``Content-Length`` body, write the precomputed answer; pipelined requests that arrive
together are answered with one write. It must never be the bottleneck of a run: it
costs a few microseconds of CPU per request, an order of magnitude less than any proxy
under test.

    python -m bench.upstream --port 8081 --size 1024
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

_END = b"\r\n\r\n"


def response_bytes(size: int) -> bytes:
    body = (b"rateguard-bench-" * (size // 16 + 1))[:size]
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            b"content-length: %d\r\n\r\n" % size) + body


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf", "skip", "response", "served")

    def __init__(self, response: bytes, counter: list) -> None:
        self.response = response
        self.served = counter
        self.transport = None
        self.buf = b""
        self.skip = 0  # request body bytes still to discard

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if self.skip:
            if len(data) <= self.skip:
                self.skip -= len(data)
                return
            data = data[self.skip:]
            self.skip = 0
        buf = self.buf + data if self.buf else data
        pos = 0
        answered = 0
        close = False
        size = len(buf)
        while pos < size:
            end = buf.find(_END, pos)
            if end < 0:
                break
            head = buf[pos:end]
            pos = end + 4
            answered += 1
            # Only heads that carry a body or ask to close need a closer look.
            if b"ength:" in head or b"lose" in head or b"hunked" in head:
                lower = head.lower()
                i = lower.find(b"content-length:")
                if i >= 0:
                    j = lower.find(b"\r\n", i)
                    length = int(lower[i + 15: j if j >= 0 else len(lower)])
                    if pos + length > size:
                        self.skip = pos + length - size
                        pos = size
                        break
                    pos += length
                if b"transfer-encoding: chunked" in lower:
                    close = True  # not needed by the benchmarks; answer and close
                    break
                if b"connection: close" in lower:
                    close = True
                    break
        self.buf = buf[pos:] if pos < size else b""
        if answered:
            self.served[0] += answered
            self.transport.write(self.response * answered if answered > 1 else self.response)
        if close:
            self.transport.close()


async def serve(host: str, port: int, size: int, ready=None) -> None:
    loop = asyncio.get_running_loop()
    response = response_bytes(size)
    counter = [0]
    server = await loop.create_server(lambda: UpstreamProtocol(response, counter), host, port,
                                      backlog=4096, reuse_address=True)
    if ready is not None:
        ready(server.sockets[0].getsockname()[1])
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--size", type=int, default=1024, help="body bytes (default 1024)")
    args = parser.parse_args(argv)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(serve(args.host, args.port, args.size,
                 ready=lambda port: print(f"upstream listening on {args.host}:{port}",
                                          flush=True)))


if __name__ == "__main__":
    main()
