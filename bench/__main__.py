"""RateGuard's load harness.

    python -m bench [run] [--scenario NAME ...] [--duration S] [--connections N]
                    [--baseline aiohttp,nginx] [--out DIR]
    python -m bench run --target URL --key KEY [--direct URL] [--target-pid PID]
    python -m bench smoke        # ~10 s of the default scenario; non-zero exit on errors
    python -m bench list         # the scenarios

Starts a fast upstream (bench/upstream.py), Valkey and the Kafka-protocol broker
(embedded, unless REDIS_URL / KAFKA_BROKERS are set), the proxy as a subprocess and a
load generator (wrk where installed, else bench/loadgen.py), pins the server under test
and the generator to separate cores, and runs the same load directly against the
upstream and through the proxy (and the baselines). Writes <scenario>.json,
<scenario>.png and summary.md into --out. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results"


def _parser() -> argparse.ArgumentParser:
    from bench.harness.scenarios import ORDER

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run scenarios (the default command)")
    run.add_argument("--scenario", action="append", default=[],
                     help=f"one of {', '.join(ORDER)}, or 'all'; repeatable or "
                          "comma-separated (default: default)")
    run.add_argument("--duration", type=float, default=10.0,
                     help="seconds of measured load per target (default 10)")
    run.add_argument("--warmup", type=float, default=1.0,
                     help="seconds of unmeasured load before each measurement (default 1)")
    run.add_argument("--connections", type=int, help="override the scenario's connections")
    run.add_argument("--size", type=int, help="override the response body size (bytes)")
    run.add_argument("--rate", type=float,
                     help="open loop at this total rate, requests/s (Python generator)")
    run.add_argument("--keys", type=int, help="override the number of distinct keys")
    run.add_argument("--phases", type=int, help="split the proxy's load into phases, "
                     "sampling its RSS after each (keys-10k: 6)")
    run.add_argument("--requests", type=int, default=0,
                     help="with phases: keep running phases until the proxy served this "
                          "many requests (e.g. 1000000 for the RSS target)")
    run.add_argument("--repeat", type=int, default=1,
                     help="measure every target N times, alternating; report the median")
    run.add_argument("--baseline", action="append", default=[],
                     help="aiohttp and/or nginx (repeatable or comma-separated), or 'all'")
    run.add_argument("--compare", action="append", default=[], type=Path, metavar="DIR",
                     help="another RateGuard checkout (e.g. `git worktree add /tmp/base "
                          "HEAD~1`) run as one more proxy, proxy@<dir name>, with the same "
                          "config, in the same rounds: an optimisation measured side by side")
    run.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                     help="auto: wrk when installed, else the Python generator")
    run.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    run.add_argument("--key-header", default="authorization",
                     help="send keys as 'Authorization: Bearer' (default) or in this header, "
                          "e.g. x-api-key")
    run.add_argument("--count-statuses", action="store_true",
                     help="count every status code (wrk: a Lua response hook, costs wrk CPU)")
    run.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    run.add_argument("--profile", action="store_true",
                     help="sample the proxy (and the aiohttp baseline) with py-spy during "
                          "the measured run; writes <scenario>-proxy.pyspy.txt (collapsed "
                          "stacks) and .summary.txt into --out")
    run.add_argument("--out", type=Path, default=DEFAULT_OUT,
                     help="output directory (default bench/results/)")
    run.add_argument("--strict", action="store_true",
                     help="exit 1 when the proxy had errors or answers other than 2xx/429")
    target = run.add_argument_group("existing deployment (load only)")
    target.add_argument("--target", metavar="URL",
                        help="run only the load, against this URL (e.g. a kind NodePort)")
    target.add_argument("--key", help="the API key to send to --target")
    target.add_argument("--direct", metavar="URL",
                        help="also load this URL (the deployment's upstream) as the baseline")
    target.add_argument("--target-pid", type=int,
                        help="a local process serving --target: report its CPU and RSS")
    smoke = sub.add_parser("smoke", help="~10 s of the default scenario; exit 1 on errors "
                                         "(used by CI; no timing assertions)")
    smoke.add_argument("--out", type=Path, default=DEFAULT_OUT / "smoke")
    smoke.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    sub.add_parser("list", help="list the scenarios")
    rep = sub.add_parser("report", help="re-render summary.md and the charts of the JSON "
                                        "reports in a directory; print the table")
    rep.add_argument("dirs", nargs="+", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "smoke", "list", "report", "-h", "--help"):
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    command_line = "python -m bench " + " ".join(shlex.quote(a) for a in argv)
    if args.command == "list":
        from bench.harness.scenarios import SCENARIOS
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:<12} {scenario.description}")
        return 0
    if args.command == "smoke":
        return smoke(args, command_line)
    if args.command == "report":
        return rerender(args.dirs)
    try:
        return run(args, command_line)
    except RuntimeError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def run(args, command_line: str) -> int:
    from bench.harness import procs, report, runner
    from bench.harness.scenarios import ORDER, SCENARIOS

    options = runner.Options(
        generator=args.generator, duration=args.duration, warmup=args.warmup,
        repeat=max(1, args.repeat), pin=not args.no_pin, key_header=args.key_header,
        count_statuses=args.count_statuses, max_requests=args.requests, timeout=args.timeout)
    baselines = _split(args.baseline)
    if "all" in baselines:
        baselines = ["nginx", "aiohttp"]
    unknown = set(baselines) - {"nginx", "aiohttp"}
    if unknown:
        raise SystemExit(f"unknown baseline(s): {', '.join(sorted(unknown))} (aiohttp, nginx)")
    options.baselines = tuple(dict.fromkeys(baselines))
    for source in args.compare:
        if not (source / "rateguard" / "__init__.py").is_file():
            raise SystemExit(f"--compare {source}: not a RateGuard checkout (no rateguard/)")
    options.compare = tuple(source.resolve() for source in args.compare)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if getattr(args, "profile", False):
        options.profile_dir = out.resolve()
    options.log_dir = out.resolve()
    layout = procs.Layout(options.pin)
    machine = procs.machine()
    if layout.enabled:
        os.sched_setaffinity(0, layout.helpers)  # the harness itself: out of the way
    from bench.harness.load import wrk_path
    meta = {"command": command_line, "machine": machine, "layout": layout.describe(),
            "revision": procs.revision(BENCH_DIR.parent),
            "generator": ("wrk" if wrk_path() else "python") if options.generator == "auto"
            else options.generator, "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    if args.target:
        if not args.key:
            raise SystemExit("--target needs --key")
        name = "target"
        result = runner.run_target(args.target, args.key, options, args.connections or 32,
                                   args.rate or 0.0, args.direct, args.target_pid, name)
        reports = [result]
        _write(result, out, meta)
    else:
        names = _split(args.scenario) or ["default"]
        if "all" in names:
            names = ORDER
        missing = [n for n in names if n not in SCENARIOS]
        if missing:
            raise SystemExit(f"unknown scenario(s): {', '.join(missing)}; "
                             f"`python -m bench list` shows them")
        reports = []
        with runner.new_workdir() as tmp:
            infra = runner.Infra(Path(tmp), layout)
            try:
                for name in names:
                    scenario = SCENARIOS[name].with_(
                        connections=args.connections, size=args.size, rate=args.rate,
                        keys=args.keys, phases=args.phases)
                    reports.append(runner.run_scenario(scenario, options, infra, layout,
                                                       Path(tmp)))
                    _write(reports[-1], out, meta)
            finally:
                infra.close()
    (out / "summary.md").write_text(report.summary_markdown(reports, meta))
    print(report.table(reports))
    print(f"\nreports: {out}/")
    bad = []
    for item in reports:
        proxy = item["results"].get("proxy")
        if proxy is not None:
            bad += [f"{item['scenario']}: {p}" for p in runner.problems(proxy)]
    for line in bad:
        print(f"problem: {line}", file=sys.stderr)
    return 1 if bad and args.strict else 0


def rerender(dirs: list[Path]) -> int:
    import json

    from bench.harness import report, runner
    for directory in dirs:
        reports, meta = [], {}
        for path in sorted(directory.glob("*.json")):
            data = json.loads(path.read_text())
            if "results" not in data:
                continue
            if data.get("all_runs"):
                for runs in data["all_runs"].values():
                    for r in runs:
                        if r.get("cpu_s") and r.get("requests") and "rps_per_core" not in r:
                            r["rps_per_core"] = round(r["requests"] / r["cpu_s"])
                data["results"] = runner.compare_rounds(data["all_runs"])
            for r in data["results"].values():
                if r.get("cpu_s") and r.get("requests") and "rps_per_core" not in r:
                    r["rps_per_core"] = round(r["requests"] / r["cpu_s"])
            runner.dump(path, data)
            report.chart(data, path.with_suffix(".png"))
            meta = {k: data.get(k) for k in ("command", "machine", "layout", "generator",
                                             "revision")}
            reports.append(data)
        (directory / "summary.md").write_text(report.summary_markdown(reports, meta))
        print(report.table(reports))
    return 0


def _write(item: dict, out: Path, meta: dict) -> None:
    from bench.harness import report, runner
    runner.dump(out / f"{item['scenario']}.json", {**meta, **item})
    report.chart(item, out / f"{item['scenario']}.png")


def smoke(args, command_line: str) -> int:
    """The default scenario, briefly, as CI's check that the harness and the proxy work:
    fails on errors, statuses other than 2xx/429, or no requests; never on timing."""
    argv = ["run", "--scenario", "default", "--duration", "3", "--warmup", "0.5",
            "--connections", "8", "--count-statuses", "--strict", "--timeout", "15",
            "--generator", args.generator, "--out", str(args.out)]
    started = time.monotonic()
    try:
        code = main(argv)
    except Exception as exc:  # a server that did not start, a generator that failed ...
        print(f"bench smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    verdict = "passed" if code == 0 else "FAILED"
    print(f"bench smoke: {verdict} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
