"""Drive load at one URL with ``wrk`` (when installed) or the Python generator, pinned to
the generator's core, and return one uniform result dict:

    {"generator", "requests", "duration_s", "rps", "latency_us": {p50, p90, p99, ...},
     "statuses": {...} (when counted), "errors": {connect, read, write, timeout, status},
     "generator_cpu_s"}

``errors.status`` counts answers outside 2xx/3xx (429 included); ``statuses`` tells
them apart when it is present.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

BENCH_ROOT = Path(__file__).resolve().parent.parent
_MARK = "BENCH_JSON "


@dataclass
class Load:
    url: str
    connections: int = 32
    duration: float = 10.0
    rate: float = 0.0                    # open loop (Python generator only)
    keys: list[str] = field(default_factory=list)  # rotated over the requests
    key_header: str = "X-API-Key"
    headers: list[str] = field(default_factory=list)
    timeout: float = 10.0
    count_statuses: bool = False         # wrk: a Lua response() hook (costs wrk CPU)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def choose(generator: str, load: Load) -> str:
    if generator == "auto":
        return "wrk" if wrk_path() and not load.rate else "python"
    if generator == "wrk":
        if not wrk_path():
            raise SystemExit("--generator wrk: wrk is not installed (apt-get install wrk)")
        if load.rate:
            raise SystemExit("--rate needs the Python generator (wrk has no fixed-rate mode)")
    return generator


def run(load: Load, generator: str = "auto", cpus: set[int] | None = None) -> dict:
    which = choose(generator, load)
    with tempfile.TemporaryDirectory(prefix="rg-load-") as tmp:
        if which == "wrk":
            args = _wrk_args(load, Path(tmp))
        else:
            args = _python_args(load, Path(tmp))
        out_path = Path(tmp) / "out"
        with open(out_path, "wb") as out:
            def preexec() -> None:
                if cpus:
                    os.sched_setaffinity(0, cpus)
            env = {**os.environ, "PYTHONPATH": _pythonpath()}
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=preexec, env=env)
            # wait4 gives the generator's own CPU time (rusage) as it exits.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        text = out_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{which} failed (exit {proc.returncode}):\n{text[-3000:]}")
    result = _parse_wrk(text) if which == "wrk" else json.loads(text.strip().splitlines()[-1])
    result["generator"] = which
    result["generator_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
    result["connections"] = load.connections
    if load.rate:
        result["target_rate"] = load.rate
    return result


def _pythonpath() -> str:
    root = str(BENCH_ROOT.parent)
    current = os.environ.get("PYTHONPATH")
    return f"{root}:{current}" if current else root


# -- the Python generator ------------------------------------------------------------------

def _python_args(load: Load, tmp: Path) -> list[str]:
    args = [sys.executable, "-m", "bench.loadgen", "--url", load.url,
            "--connections", str(load.connections), "--duration", str(load.duration),
            "--timeout", str(load.timeout)]
    if load.rate:
        args += ["--rate", str(load.rate)]
    for header in load.headers:
        args += ["--header", header]
    if load.keys:
        if len(load.keys) == 1:
            args += ["--header", f"{load.key_header}: {load.keys[0]}"]
        else:
            keys_file = tmp / "keys.txt"
            keys_file.write_text("\n".join(load.keys) + "\n")
            args += ["--keys-file", str(keys_file), "--key-header", load.key_header]
    return args


# -- wrk -----------------------------------------------------------------------------------

def _lua_str(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def wrk_script(load: Load) -> str:
    """The Lua script: optional key rotation, optional status counting, and a done()
    that prints the summary as one JSON line."""
    path = urlsplit(load.url).path or "/"
    query = urlsplit(load.url).query
    if query:
        path += "?" + query
    lines = ["local threads = {}",
             "function setup(thread) table.insert(threads, thread) end",
             'wrk.headers["User-Agent"] = "rateguard-bench"']
    for header in load.headers:
        name, _, value = header.partition(":")
        lines.append(f"wrk.headers[{_lua_str(name.strip())}] = {_lua_str(value.strip())}")
    if len(load.keys) == 1:
        lines.append(f"wrk.headers[{_lua_str(load.key_header)}] = {_lua_str(load.keys[0])}")
    elif load.keys:
        # Every request of a thread cycles through prebuilt requests, one per key.
        lines.append("local keys = {" + ",".join(_lua_str(k) for k in load.keys) + "}")
        lines += [
            "local reqs = {}",
            "local idx = 0",
            "function init(args)",
            "  statuses = {}",
            f"  for i, k in ipairs(keys) do reqs[i] = wrk.format('GET', {_lua_str(path)}, "
            f"{{[{_lua_str(load.key_header)}] = k}}) end",
            "  idx = math.random(#reqs) - 1",
            "end",
            "function request() idx = idx % #reqs + 1; return reqs[idx] end",
        ]
    if not (len(load.keys) > 1):
        lines += ["function init(args) statuses = {} end"]
    if load.count_statuses:
        lines += ["function response(status, headers, body)",
                  "  statuses[status] = (statuses[status] or 0) + 1",
                  "end"]
    lines += [
        "function done(summary, latency, requests)",
        "  local counts = {}",
        "  for _, t in ipairs(threads) do",
        "    local s = t:get('statuses')",
        "    if s then for k, v in pairs(s) do counts[k] = (counts[k] or 0) + v end end",
        "  end",
        "  local parts = {}",
        "  for k, v in pairs(counts) do table.insert(parts, string.format('\"%d\":%d', k, v)) end",
        "  local e = summary.errors",
        f"  io.write('{_MARK}')",
        "  io.write(string.format('{\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,', "
        "summary.requests, summary.duration, summary.bytes))",
        "  io.write(string.format('\"errors\":{\"connect\":%d,\"read\":%d,\"write\":%d,"
        "\"status\":%d,\"timeout\":%d},', e.connect, e.read, e.write, e.status, e.timeout))",
        "  io.write(string.format('\"latency_us\":{\"min\":%d,\"mean\":%.1f,\"max\":%d,"
        "\"p50\":%d,\"p90\":%d,\"p99\":%d,\"p999\":%d},', latency.min, latency.mean, "
        "latency.max, latency:percentile(50), latency:percentile(90), "
        "latency:percentile(99), latency:percentile(99.9)))",
        "  io.write('\"statuses\":{' .. table.concat(parts, ',') .. '}}\\n')",
        "end",
    ]
    return "\n".join(lines) + "\n"


def _wrk_args(load: Load, tmp: Path) -> list[str]:
    script = tmp / "bench.lua"
    script.write_text(wrk_script(load))
    seconds = max(1, math.ceil(load.duration))
    return [wrk_path() or "wrk", "-t1", f"-c{load.connections}", f"-d{seconds}s",
            "--timeout", f"{max(1, math.ceil(load.timeout))}s", "-s", str(script), load.url]


def _parse_wrk(text: str) -> dict:
    for line in text.splitlines():
        if line.startswith(_MARK):
            data = json.loads(line[len(_MARK):])
            break
    else:
        raise RuntimeError(f"wrk printed no summary:\n{text[-3000:]}")
    duration = data.pop("duration_us") / 1e6
    data["duration_s"] = round(duration, 4)
    data["rps"] = round(data["requests"] / duration, 1) if duration else 0.0
    if not data["statuses"]:
        data.pop("statuses")  # not counted in this run
    return data
