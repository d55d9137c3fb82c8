"""Sample the proxy with py-spy during a measured run (``--profile``) and summarise
where its CPU went: the functions with the most samples on top of the stack (self)
and anywhere in it (inclusive).

py-spy is not a dependency: ``pip install py-spy``. The raw output (collapsed stacks,
one ``frame;frame;... count`` per line) opens in speedscope or flamegraph.pl.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Frames every sample passes through (start-up, the CLI, the loop itself): left out of
# the inclusive table, where they would only say "100 %".
_WRAPPERS = ("<frozen runpy>", "click/", "rateguard/cli.py", "rateguard/__main__.py",
             "uvloop/__init__.py", "asyncio/runners.py", "loop.c", "core.c", "object.h",
             "libc.so")
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, cpus: set[int] | None) -> subprocess.Popen | None:
    binary = py_spy()
    if binary is None:
        print("[bench] --profile: py-spy is not installed (pip install py-spy); skipping",
              file=sys.stderr)
        return None
    import os

    def preexec() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
         "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec)


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/rateguard/", "lib/python3"):
        i = path.find(marker)
        if i >= 0:
            path = path[i + (len(marker) if marker != "/rateguard/" else 1):]
            break
    return f"{match.group('func')} ({path})"


def summarise(raw: Path, top: int = 25) -> dict:
    """Self and inclusive sample shares per function, from py-spy's raw output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        count = int(match.group("count"))
        frames = [_short(f) for f in match.group("stack").split(";") if f.strip()]
        # py-spy puts the process/thread as the first frame(s); those are not functions.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if not any(w in frame for w in _WRAPPERS):
                inclusive[frame] += count

    def table(counter: Counter) -> list[dict]:
        return [{"function": name, "samples": n, "pct": round(100 * n / total, 1)}
                for name, n in counter.most_common(top)]

    return {"samples": total, "self": table(own), "inclusive": table(inclusive)}


def render(summary: dict) -> str:
    lines = [f"py-spy samples: {summary['samples']}", "",
             "top self (on CPU in this function; 'Runner.run' without --native is the",
             "event loop's own C code: epoll, socket read/write syscalls, callbacks):"]
    lines += [f"  {row['pct']:5.1f}%  {row['function']}" for row in summary["self"]]
    lines += ["", "top inclusive (this function or what it calls):"]
    lines += [f"  {row['pct']:5.1f}%  {row['function']}" for row in summary["inclusive"]]
    return "\n".join(lines) + "\n"
