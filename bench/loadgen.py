"""The Python load generator: the fallback when ``wrk`` is not installed.

Raw asyncio protocols on uvloop (no HTTP client library): each connection keeps one
request in flight, with requests prebuilt as bytes and responses parsed just enough to
find their end (``Content-Length`` or chunked). On one core it drives 40,000-60,000
requests/s against a trivial server, several times what a Python proxy serves, so it is
not what a proxy measurement measures.

Two modes:

* closed loop (default): every connection sends its next request as soon as the
  previous answer is complete, like ``wrk``;
* open loop (``--rate R``): requests are due at a fixed total rate spread over the
  connections; latency is measured from when a request was *due*, not when it could be
  sent, so a stalled server is not hidden (no coordinated omission).

``--processes P`` splits the connections over P processes (for machines with cores to
spare); the samples are merged before the percentiles are taken.

Prints one JSON object (see ``summarise``) on stdout.

    python -m bench.loadgen --url http://127.0.0.1:3001/bench/x -c 32 -d 10 \\
        --header "X-API-Key: rg_..."
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from urllib.parse import urlsplit

_END = b"\r\n\r\n"


class Run:
    """What all connections of one process share."""

    def __init__(self, requests: list[bytes], duration: float, max_requests: int,
                 rate: float, connections: int, timeout: float) -> None:
        self.requests = requests
        self.next_index = 0
        self.duration = duration
        self.max_requests = max_requests
        self.rate = rate
        self.period = connections / rate if rate else 0.0  # per connection
        self.timeout = timeout
        self.samples = array("q")  # latency of each completed request, in ns
        self.statuses: dict[int, int] = {}
        self.errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
        self.bytes = 0
        self.sent = 0
        self.done = 0
        self.stopped = False
        self.started = 0.0
        self.finished = 0.0
        self.conns: list[Conn] = []
        self.finished_event: asyncio.Event | None = None

    def next_request(self) -> bytes:
        requests = self.requests
        if len(requests) == 1:
            return requests[0]
        i = self.next_index
        self.next_index = (i + 1) % len(requests)
        return requests[i]

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.finished = time.perf_counter()
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()
        if self.finished_event is not None:
            self.finished_event.set()


class Conn(asyncio.Protocol):
    __slots__ = ("run", "loop", "host", "port", "transport", "buf", "state", "remaining",
                 "status", "sent_at", "due", "close_after", "chunk_remaining", "timer",
                 "offset", "in_flight")

    def __init__(self, run: Run, loop, host: str, port: int, offset: float) -> None:
        self.run = run
        self.loop = loop
        self.host = host
        self.port = port
        self.transport = None
        self.buf = b""
        self.state = 0  # 0 head, 1 content-length body, 2 chunked body
        self.remaining = 0
        self.chunk_remaining = 0
        self.status = 0
        self.sent_at = 0
        self.due = 0.0
        self.close_after = False
        self.timer = None
        self.offset = offset
        self.in_flight = False

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        if self.run.stopped:
            return
        task = self.loop.create_task(
            self.loop.create_connection(lambda: self, self.host, self.port))
        task.add_done_callback(self._connected)

    def _connected(self, task) -> None:
        if task.cancelled() or task.exception() is not None:
            self.run.errors["connect"] += 1
            self.loop.call_later(0.05, self.connect)

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.state = 0
        if self.run.stopped:
            transport.close()
            return
        if self.run.rate:
            # (Re)connecting is not the server's answer being late: start on time from here.
            self.due = max(self.due or self.run.started + self.offset, time.perf_counter())
            self.schedule()
        else:
            self.send()

    def connection_lost(self, exc) -> None:
        self.transport = None
        run = self.run
        if run.stopped:
            return
        if self.in_flight:
            self.in_flight = False
            run.errors["read"] += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.loop.call_later(0.0 if self.close_after else 0.01, self.connect)
        self.close_after = False

    # -- requests -----------------------------------------------------------------------

    def schedule(self) -> None:
        now = time.perf_counter()
        if self.due <= now:
            # Overdue because the previous answer came late: count from when it was due.
            self.send(from_due=True)
        else:
            self.timer = self.loop.call_later(self.due - now, self._fire)

    def _fire(self) -> None:
        # The loop's timers have millisecond resolution: a request sent by a timer is
        # timed from when it actually left, so timer slop is not charged to the server.
        self.timer = None
        self.send()

    def send(self, from_due: bool = False) -> None:
        run = self.run
        if run.stopped or self.transport is None:
            return
        if run.max_requests and run.sent >= run.max_requests:
            return
        run.sent += 1
        self.in_flight = True
        now_ns = time.perf_counter_ns()
        # Open loop: a request that had to wait for a slow answer counts from when it
        # was due (no coordinated omission).
        self.sent_at = min(now_ns, int(self.due * 1e9)) if from_due else now_ns
        self.transport.write(run.next_request())

    def data_received(self, data: bytes) -> None:
        run = self.run
        if run.stopped or not self.in_flight:
            return
        run.bytes += len(data)
        if self.state == 1 and not self.buf:
            # Fast path for large bodies: just count.
            if len(data) < self.remaining:
                self.remaining -= len(data)
                return
            data = data[self.remaining:]
            self.remaining = 0
            self.complete()
            return
        buf = self.buf + data if self.buf else data
        self.buf = b""
        if self.state == 0:
            end = buf.find(_END)
            if end < 0:
                self.buf = buf
                return
            head = buf[:end]
            self.status = int(head[9:12])
            lower = head.lower()
            self.close_after = b"\r\nconnection: close" in lower
            i = lower.find(b"\r\ncontent-length:")
            body = buf[end + 4:]
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                self.remaining = int(lower[i + 17: j if j >= 0 else len(lower)])
                if len(body) >= self.remaining:
                    self.remaining = 0
                    self.complete()
                    return
                self.remaining -= len(body)
                self.state = 1
                return
            if b"\r\ntransfer-encoding: chunked" in lower:
                self.state = 2
                self.chunk_remaining = 0
                buf = body
            else:  # no body (e.g. 204/304) or close-delimited: treat as no body
                self.complete()
                return
        if self.state == 2:
            self.chunked(buf)

    def chunked(self, buf: bytes) -> None:
        pos = 0
        size = len(buf)
        while True:
            if self.chunk_remaining:
                take = min(self.chunk_remaining, size - pos)
                pos += take
                self.chunk_remaining -= take
                if self.chunk_remaining:
                    return
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                self.buf = buf[pos:]
                return
            line = buf[pos:eol]
            if not line:  # the CRLF after a chunk's data
                pos = eol + 2
                continue
            length = int(line.split(b";", 1)[0], 16)
            if length == 0:
                if buf.find(b"\r\n", eol + 2) < 0:  # need the final CRLF
                    self.buf = buf[pos:]
                    return
                self.complete()
                return
            pos = eol + 2
            self.chunk_remaining = length + 2  # data and its CRLF

    def complete(self) -> None:
        run = self.run
        self.in_flight = False
        self.state = 0
        now_ns = time.perf_counter_ns()
        run.samples.append(now_ns - self.sent_at)
        status = self.status
        run.statuses[status] = run.statuses.get(status, 0) + 1
        if not 200 <= status < 400:
            run.errors["status"] += 1
        run.done += 1
        if run.max_requests and run.done >= run.max_requests:
            run.stop()
            return
        if self.close_after:
            self.transport.close()  # connection_lost reconnects
            return
        if run.rate:
            self.due += run.period
            self.schedule()
        else:
            self.send()

    def check_timeout(self, now_ns: int) -> None:
        if self.in_flight and now_ns - self.sent_at > self.run.timeout * 1e9:
            self.run.errors["timeout"] += 1
            self.in_flight = False
            if self.transport is not None:
                self.transport.abort()


def build_requests(url: str, headers: list[str], keys: list[str], key_header: str,
                   method: str = "GET") -> list[bytes]:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    base = f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: rateguard-bench\r\n"
    for header in headers:
        base += header.strip() + "\r\n"
    if not keys:
        return [(base + "\r\n").encode()]
    return [(base + f"{key_header}: {key}\r\n\r\n").encode() for key in keys]


async def _run(args, requests: list[bytes]) -> Run:
    loop = asyncio.get_running_loop()
    parts = urlsplit(args.url)
    host, port = parts.hostname, parts.port or 80
    run = Run(requests, args.duration, args.requests, args.rate, args.connections, args.timeout)
    run.finished_event = asyncio.Event()
    run.started = time.perf_counter()
    period = run.period
    for i in range(args.connections):
        conn = Conn(run, loop, host, port, offset=(period * i / args.connections) if period else 0)
        run.conns.append(conn)
        conn.connect()
    if args.duration:
        loop.call_later(args.duration, run.stop)

    def watchdog() -> None:
        if run.stopped:
            return
        now = time.perf_counter_ns()
        for conn in run.conns:
            conn.check_timeout(now)
        loop.call_later(0.5, watchdog)

    loop.call_later(0.5, watchdog)
    await run.finished_event.wait()
    await asyncio.sleep(0)  # let the transports close
    return run


def percentile(sorted_samples, p: float) -> float:
    if not sorted_samples:
        return 0.0
    k = min(len(sorted_samples) - 1, max(0, int(round(p / 100.0 * len(sorted_samples) + 0.5)) - 1))
    return sorted_samples[k]


def summarise(samples, statuses: dict, errors: dict, elapsed: float, nbytes: int) -> dict:
    """The generator's report: counts, requests/s and latency percentiles in us."""
    ordered = sorted(samples)
    n = len(ordered)
    us = 1e-3
    return {
        "requests": n,
        "duration_s": round(elapsed, 4),
        "rps": round(n / elapsed, 1) if elapsed > 0 else 0.0,
        "bytes": nbytes,
        "latency_us": {
            "min": round(ordered[0] * us, 1) if n else 0.0,
            "mean": round(sum(ordered) / n * us, 1) if n else 0.0,
            "p50": round(percentile(ordered, 50) * us, 1),
            "p90": round(percentile(ordered, 90) * us, 1),
            "p99": round(percentile(ordered, 99) * us, 1),
            "p999": round(percentile(ordered, 99.9) * us, 1),
            "max": round(ordered[-1] * us, 1) if n else 0.0,
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
    }


def _child(args, requests) -> None:
    import gc
    gc.disable()  # a bounded run; collector pauses would show up as server latency
    try:
        import uvloop
        run = uvloop.run(_run(args, requests))
    except ImportError:  # pragma: no cover
        run = asyncio.run(_run(args, requests))
    elapsed = (run.finished or time.perf_counter()) - run.started
    if args.samples_file:
        with open(args.samples_file, "wb") as fh:
            run.samples.tofile(fh)
        print(json.dumps({"statuses": run.statuses, "errors": run.errors, "bytes": run.bytes,
                          "elapsed": elapsed, "count": len(run.samples)}), flush=True)
        return
    print(json.dumps(summarise(run.samples, run.statuses, run.errors, elapsed, run.bytes)),
          flush=True)


def _parent(args, argv: list[str]) -> None:
    """Split the connections over several processes and merge what they measured."""
    procs = []
    with tempfile.TemporaryDirectory(prefix="rg-loadgen-") as tmp:
        per = [args.connections // args.processes + (1 if i < args.connections % args.processes
                                                     else 0) for i in range(args.processes)]
        for i, conns in enumerate(per):
            if not conns:
                continue
            child = [sys.executable, "-m", "bench.loadgen", *argv, "--processes", "1",
                     "--connections", str(conns), "--samples-file", f"{tmp}/{i}.bin"]
            if args.rate:
                child += ["--rate", str(args.rate * conns / args.connections)]
            if args.requests:
                child += ["--requests", str(max(1, args.requests * conns // args.connections))]
            procs.append((subprocess.Popen(child, stdout=subprocess.PIPE), f"{tmp}/{i}.bin"))
        samples = array("q")
        statuses: dict[int, int] = {}
        errors: dict[str, int] = {}
        nbytes = 0
        elapsed = 0.0
        for proc, path in procs:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"loadgen child failed with {proc.returncode}")
            part = json.loads(out.decode().strip().splitlines()[-1])
            with open(path, "rb") as fh:
                chunk = array("q")
                chunk.frombytes(fh.read())
                samples.extend(chunk)
            for k, v in part["statuses"].items():
                statuses[int(k)] = statuses.get(int(k), 0) + v
            for k, v in part["errors"].items():
                errors[k] = errors.get(k, 0) + v
            nbytes += part["bytes"]
            elapsed = max(elapsed, part["elapsed"])
    print(json.dumps(summarise(samples, statuses, errors, elapsed, nbytes)), flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("-c", "--connections", type=int, default=32)
    p.add_argument("-d", "--duration", type=float, default=10.0,
                   help="seconds (0: until --requests)")
    p.add_argument("-n", "--requests", type=int, default=0, help="stop after this many")
    p.add_argument("--rate", type=float, default=0.0,
                   help="open loop at this total rate (requests/s); 0: closed loop")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    p.add_argument("--keys-file", help="one API key per line, rotated over the requests")
    p.add_argument("--key-header", default="X-API-Key")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--samples-file", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if not args.duration and not args.requests:
        raise SystemExit("give --duration or --requests")
    keys: list[str] = []
    if args.keys_file:
        with open(args.keys_file) as fh:
            keys = [line.strip() for line in fh if line.strip()]
    requests = build_requests(args.url, args.header, keys, args.key_header)
    if args.processes > 1:
        _parent(args, _strip(argv, {"--processes", "--connections", "-c", "--rate",
                                    "--requests", "-n"}))
    else:
        _child(args, requests)


def _strip(argv: list[str], names: set[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in names:
            skip = True
            continue
        if item.split("=", 1)[0] in names:
            continue
        out.append(item)
    return out


if __name__ == "__main__":
    main()
