"""What one request costs the proxy in instructions: a figure the machine's noise can't move.

    python -m bench.instructions [--scenario default] [--requests 2000]
                                 [--compare DIR ...] [--repeat N] [--out FILE] [--keep DIR]

Runs the proxy under ``valgrind --tool=callgrind`` (instrumentation off), sends warm-up
requests, switches instrumentation on with ``callgrind_control``, sends ``--requests``
requests one after the other on one keep-alive connection, switches it off and reads
the instruction count of those requests from callgrind's dump: user-space
instructions per request, the proxy's own Python and C (the kernel's part of a
socket call is not counted; ``python -m bench`` measures that in seconds).

On a shared machine the same code gives 70-100 us of CPU per request from one run to
the next; its instruction count moves by 1-3 % (how many produce rounds and
collections fall inside the counted requests), so ``--repeat 3`` shows a change of a
few percent that a timed run can't. ``--compare DIR`` counts another checkout's proxy
(e.g. ``git worktree add /tmp/base HEAD~1``) the same way, alternating with this one.
Needs valgrind (``apt-get install valgrind``); under it the proxy runs ~50x slower, so
start-up takes ~15 s and 2,000 requests ~15 s more.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import procs, runner
from bench.harness.scenarios import SCENARIOS


def drive(port: int, key: str, count: int) -> int:
    """``count`` GETs on one keep-alive connection, one at a time; how many got a 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ok = 0
    try:
        for _ in range(count):
            conn.request("GET", runner.PATH, headers={"Authorization": f"Bearer {key}"})
            response = conn.getresponse()
            response.read()
            ok += response.status == 200
    finally:
        conn.close()
    return ok


def totals(path: Path) -> int:
    """The instruction total of a callgrind dump (its ``totals:`` line)."""
    text = path.read_text(errors="replace")
    match = re.search(r"^totals:\s+(\d+)", text, re.M)
    if match is None:
        raise RuntimeError(f"no totals in {path}")
    return int(match.group(1))


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def measure(workdir: Path, scenario, upstream, key: str, infra, layout, source: Path | None,
            warmup: int, requests: int, linger_ms: int, keep: Path | None = None) -> dict:
    label = "proxy" if source is None else f"proxy@{source.name}"
    out = workdir / f"callgrind-{label.replace('@', '-')}.out"
    wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}")
    server = runner.start_proxy(workdir, scenario, upstream, [key], infra, layout,
                                source=source, wrapper=wrapper, ready_timeout=300,
                                settings={"KAFKA_LINGER_MS": str(linger_ms)})
    try:
        port = int(server.url.split(":")[2].split("/")[0])
        drive(port, key, warmup)
        pid = str(server.proc.pid)
        control("-i", "on", pid)
        started = time.monotonic()
        ok = drive(port, key, requests)
        control("-i", "off", pid)
        seconds = time.monotonic() - started
        for old in workdir.glob(out.name + "*"):
            old.unlink()
        control("-d", pid)
        deadline = time.monotonic() + 60
        while not list(workdir.glob(out.name + "*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        dumps = sorted(workdir.glob(out.name + "*"))
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump for {label}")
        time.sleep(1.0)  # let the dump finish
        instructions = sum(totals(d) for d in dumps)
        if keep is not None:  # for callgrind_annotate / kcachegrind
            keep.mkdir(parents=True, exist_ok=True)
            for dump in dumps:
                shutil.copy(dump, keep / f"{label.replace('@', '-')}.callgrind")
    finally:
        server.stop()
    if ok != requests:
        raise RuntimeError(f"{label}: {requests - ok} of {requests} requests were not 200")
    runner.log(f"{label}: {instructions / requests:,.0f} instructions per request "
               f"({requests} requests, {seconds:.0f} s under valgrind)")
    return {"target": label, "requests": requests, "instructions": instructions,
            "instructions_per_request": round(instructions / requests)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="default",
                        help="a harness scenario (its features and response size)")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted")
    parser.add_argument("--warmup", type=int, default=300, help="requests before counting")
    parser.add_argument("--linger-ms", type=int, default=5000,
                        help="the proxy's KAFKA_LINGER_MS: valgrind slows it ~40x, and 5 s "
                             "gives a produce round about as many events as the default "
                             "100 ms does at full speed")
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="another checkout whose proxy is counted the same way")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds (each target once per round); the median is reported")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--keep", type=Path,
                        help="copy the callgrind dumps here (callgrind_annotate reads them)")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench.instructions needs {tool} (apt-get install valgrind)")
    scenario = SCENARIOS[args.scenario]
    layout = procs.Layout(True)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="rateguard-instructions-") as tmp:
        workdir = Path(tmp)
        infra = runner.Infra(workdir, layout)
        upstream = None
        try:
            upstream = runner.start_upstream(workdir, scenario.size, layout)
            key = runner.make_keys(1)[0]
            for _ in range(args.repeat):  # rounds alternate the targets
                for source in [None, *[c.resolve() for c in args.compare]]:
                    result = measure(workdir, scenario, upstream, key, infra, layout, source,
                                     args.warmup, args.requests, args.linger_ms, args.keep)
                    runs.setdefault(result["target"], []).append(result)
        finally:
            if upstream is not None:
                upstream.stop()
            infra.close()
    medians = {target: statistics.median(r["instructions_per_request"] for r in results)
               for target, results in runs.items()}
    base = medians["proxy"]
    print(f"| target | instructions per request (median of {args.repeat}) | runs | vs proxy |")
    print("|---|---|---|---|")
    for target, median in medians.items():
        each = ", ".join(f"{r['instructions_per_request']:,}" for r in runs[target])
        print(f"| {target} | {median:,.0f} | {each} | {median / base:.3f} |")
    if args.out:
        args.out.write_text(json.dumps({"scenario": scenario.name, "runs": runs,
                                        "medians": medians}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
