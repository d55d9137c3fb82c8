"""Processes of a benchmark run: start, pin to cores, read CPU time and memory, stop.

CPU time and memory come from /proc (Linux): ``utime + stime`` of ``/proc/PID/stat`` for
every process of a tree (nginx has a master and workers), ``VmHWM`` (peak resident set)
and ``VmRSS`` of ``/proc/PID/status``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, what: str,
                  proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting"
                               + (f"; log:\n{tail(log)}" if log else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g}s"
                       + (f"; log:\n{tail(log)}" if log else ""))


def tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


# Everything is on 127.0.0.1: never through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urlopen(request, timeout: float):
    return _OPENER.open(request, timeout=timeout)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urlopen(url, timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _die_with_parent() -> None:
    """Children get SIGTERM when the harness dies (Linux), so nothing outlives a run."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(args: list[str], *, log: Path, env: dict | None = None,
          cpus: set[int] | None = None, cwd: str | None = None) -> subprocess.Popen:
    """A child process that dies with the harness, optionally pinned to ``cpus``."""
    def preexec() -> None:
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    out = open(log, "ab")
    try:
        return subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=preexec, cwd=cwd)
    finally:
        out.close()


def stop(proc: subprocess.Popen | None, timeout: float = 10.0, sig=signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- /proc ---------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """Direct and indirect children of ``pid`` (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree(pid: int) -> list[int]:
    return [pid, *children(pid)]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def memory_kb(pids: list[int]) -> dict[str, int]:
    """Summed ``VmHWM`` (peak RSS) and ``VmRSS`` of these processes, in KiB."""
    hwm = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return {"peak_rss_kb": hwm, "rss_kb": rss}


def pin(pids: list[int], cpus: set[int] | None) -> None:
    if not cpus:
        return
    for pid in pids:
        try:
            # Every thread: Valkey and Tansu have several.
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "python": sys.version.split()[0]}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    return info


def revision(repo: Path) -> str | None:
    """The commit being measured, and whether rateguard/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--",
                                "rateguard"], capture_output=True, text=True,
                               timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not head:
        return None
    return head + (" + uncommitted changes in rateguard/" if dirty else "")


class Layout:
    """Which cores run what. With two or more cores the server under test (the proxy,
    a baseline, or the upstream in the direct run) gets one core to itself and the load
    generator another; the helpers (upstream behind a proxy, Valkey, the broker, the
    harness) share the generator's core, or the remaining cores where there are some."""

    def __init__(self, enabled: bool = True) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.enabled = enabled and len(cpus) >= 2
        if self.enabled:
            self.server = {cpus[0]}
            self.generator = {cpus[1]}
            self.helpers = set(cpus[2:]) or {cpus[1]}
        else:
            self.server = self.generator = self.helpers = None

    def describe(self) -> dict:
        if not self.enabled:
            return {"pinned": False}
        return {"pinned": True, "server_under_test": sorted(self.server),
                "load_generator": sorted(self.generator), "helpers": sorted(self.helpers)}
