"""Where the proxy's latency tail comes from: loop stalls, collections, phases.

    python -m bench.stalls [--scenario c1] [--connections 1] [--duration 8]

Runs the proxy in a child process (pinned like the harness pins it) with three
probes, and loads it with ``wrk`` (needed here; no Python fallback):

* a ticker that sleeps 1 ms in a loop and records how late it wakes: how long the
  event loop was busy with something else (a produce round, a collection ...);
* ``gc.callbacks`` timing every garbage collection, by generation;
* per request, when the limiter had answered (the request goes upstream) and when
  the response was complete: the "admit" and "upstream" phases of the slowest ones.

Prints wrk's latency distribution and the three. Diagnostic only: the probes cost
some CPU, so its throughput is not a figure to compare (use ``python -m bench``).
"""

from __future__ import annotations

import argparse
from array import array
import asyncio
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] if values else 0.0


def child(config: str) -> None:
    """The proxy (ProxyApp, as ``rateguard proxy`` runs it) with the probes."""
    import uvloop

    from rateguard.proxy import http_server
    from rateguard.proxy.app import ProxyApp
    from rateguard.settings import Settings
    from rateguard.snapshot.yaml_source import YamlSource

    clock = time.perf_counter
    late: list[float] = []
    # Flat arrays of floats, not tuples: the probe must not feed the collector itself.
    collections = {0: array("d"), 1: array("d"), 2: array("d")}  # durations by generation
    phases = array("d")  # total, admit, upstream, per request
    forwarded: dict[int, float] = {}
    done: dict[int, float] = {}
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = clock()
        else:
            collections[info["generation"]].append(clock() - started[0])

    exchange, server = http_server.Exchange, http_server.ProxyServer
    send_request, on_response_end, record = (
        exchange.send_request, exchange.on_response_end, server.record)

    def timed_send_request(self, conn, admission):
        forwarded[id(self)] = clock()
        return send_request(self, conn, admission)

    def timed_on_response_end(self, keep_alive):
        done[id(self)] = clock()
        return on_response_end(self, keep_alive)

    def timed_record(self, ex):
        sent, answered = forwarded.pop(id(ex), None), done.pop(id(ex), None)
        if sent is not None and answered is not None:
            phases.extend((clock() - ex.started, sent - ex.started, answered - sent))
        return record(self, ex)

    exchange.send_request = timed_send_request
    exchange.on_response_end = timed_on_response_end
    server.record = timed_record

    async def ticker() -> None:
        while True:
            t = clock()
            await asyncio.sleep(0.001)
            late.append(clock() - t - 0.001)

    async def main() -> None:
        settings = Settings.from_env()
        app = ProxyApp(settings, YamlSource(config), host="127.0.0.1",
                       events=bool(settings.KAFKA_BROKERS))
        await app.start()
        gc.collect()
        gc.freeze()  # as rateguard.proxy.app.serve does
        if os.environ.get("NOGC"): gc.disable()
        gc.callbacks.append(on_gc)
        tick = asyncio.ensure_future(ticker())
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        tick.cancel()
        gc.callbacks.remove(on_gc)
        late.sort()
        stalls = [x for x in late if x > 0.0003]
        print(f"loop late (1 ms ticker, {len(late)} ticks): "
              f"p50 {_quantile(late, .5) * 1e6:.0f} us, p99 {_quantile(late, .99) * 1e6:.0f} us, "
              f"p99.9 {_quantile(late, .999) * 1e6:.0f} us, "
              f"max {late[-1] * 1e6 if late else 0:.0f} us; {len(stalls)} ticks late by over "
              f"300 us ({sum(stalls) * 1000:.1f} ms in all)")
        for generation in (0, 1, 2):
            times = sorted(collections[generation])
            if times:
                print(f"gc generation {generation}: {len(times)} collections, median "
                      f"{_quantile(times, .5) * 1e6:.0f} us, max {times[-1] * 1e6:.0f} us, "
                      f"{sum(times) * 1000:.1f} ms in all")
        rows = sorted(zip(phases[0::3], phases[1::3], phases[2::3]))
        for q in (0.5, 0.9, 0.99, 0.999):
            total, admit, upstream = _quantile(rows, q) if rows else (0, 0, 0)
            print(f"request p{q * 100:g} inside the proxy: {total * 1e6:.0f} us (head to limiter "
                  f"answered {admit * 1e6:.0f} us, upstream {upstream * 1e6:.0f} us)")
        await app.stop()

    uvloop.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stalls",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="c1", help="a harness scenario (its features)")
    parser.add_argument("--connections", type=int, default=None,
                        help="wrk connections (default: the scenario's)")
    parser.add_argument("--duration", type=int, default=8, help="seconds of load")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    import yaml

    from bench.harness import procs, runner
    from bench.harness.load import wrk_path
    from bench.harness.scenarios import SCENARIOS

    if wrk_path() is None:
        raise SystemExit("bench.stalls needs wrk (apt-get install wrk)")
    scenario = SCENARIOS[args.scenario]
    connections = args.connections or scenario.connections
    layout = procs.Layout(True)
    if layout.enabled:
        os.sched_setaffinity(0, layout.helpers)
    with tempfile.TemporaryDirectory(prefix="rateguard-stalls-") as tmp:
        workdir = Path(tmp)
        infra = runner.Infra(workdir, layout)
        upstream = None
        proxy = None
        try:
            upstream = runner.start_upstream(workdir, scenario.size, layout)
            key = runner.make_keys(1)[0]
            config = workdir / "proxy.yaml"
            config.write_text(yaml.safe_dump(runner.proxy_config(
                scenario, upstream.extra["port"], [key])))
            port = procs.free_port()
            env = {**runner.proxy_env(infra, scenario, port, procs.free_port()),
                   "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            proxy = procs.spawn([sys.executable, "-m", "bench.stalls", "--child", str(config)],
                                log=workdir / "proxy.log", env=env, cpus=layout.server)
            procs.wait_for_port(port, 60, "the proxy", proxy, workdir / "proxy.log")
            time.sleep(1.0)
            wrk = [wrk_path(), "-t1", f"-c{connections}", f"-d{args.duration}s", "--latency",
                   "-H", f"Authorization: Bearer {key}", f"http://127.0.0.1:{port}{runner.PATH}"]
            if layout.enabled:
                wrk = ["taskset", "-c", ",".join(map(str, sorted(layout.generator)))] + wrk
            out = subprocess.run(wrk, capture_output=True, text=True, timeout=args.duration + 30)
            print(f"{scenario.name}, {connections} connection(s), {args.duration} s (wrk):")
            print("\n".join(line for line in out.stdout.splitlines()
                            if "%" in line or "Requests/sec" in line))
            procs.stop(proxy, timeout=30)
            print((workdir / "proxy.log").read_text().strip())
        finally:
            procs.stop(proxy)
            if upstream is not None:
                upstream.stop()
            infra.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
