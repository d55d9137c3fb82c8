"""The report of a run: a JSON file and a PNG chart per scenario, and a Markdown table of
all scenarios (summary.md) in the output directory."""

from __future__ import annotations

from pathlib import Path

ORDER = ("direct", "proxy", "nginx", "aiohttp")
COLORS = {"direct": "#8c8c8c", "proxy": "#1f77b4", "nginx": "#2ca02c", "aiohttp": "#d62728"}


def _targets(report: dict) -> list[str]:
    results = report["results"]
    return [t for t in ORDER if t in results] + [t for t in results if t not in ORDER]


def chart(report: dict, path: Path) -> Path | None:
    """Latency percentiles (grouped bars) and throughput, per target."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = report["results"]
    targets = _targets(report)
    percentiles = ("p50", "p90", "p99")
    fig, (ax_lat, ax_rps) = plt.subplots(1, 2, figsize=(12, 4.8),
                                         gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(1, len(targets))
    for i, target in enumerate(targets):
        values = [results[target]["latency_us"].get(p, 0) for p in percentiles]
        xs = [x + (i - (len(targets) - 1) / 2) * width for x in range(len(percentiles))]
        bars = ax_lat.bar(xs, values, width, label=target, color=COLORS.get(target))
        for bar, value in zip(bars, values):
            ax_lat.annotate(f"{value:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax_lat.set_xticks(range(len(percentiles)), percentiles)
    ax_lat.set_ylabel("latency (us)")
    ax_lat.set_title("latency percentiles")
    ax_lat.legend(fontsize=8)
    values = [results[t]["rps"] for t in targets]
    bars = ax_rps.bar(targets, values, color=[COLORS.get(t, "#9467bd") for t in targets])
    for bar, target in zip(bars, targets):
        r = results[target]
        label = f"{r['rps']:,.0f}"
        if r.get("cpu_us_per_req"):
            label += f"\n{r['cpu_us_per_req']:.0f} us CPU/req"
        ax_rps.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax_rps.set_ylabel("requests/s")
    ax_rps.set_title("throughput")
    ax_rps.set_ylim(0, max(values or [1]) * 1.25)
    rate = f", open loop {report['rate']:g}/s" if report.get("rate") else ""
    fig.suptitle(f"RateGuard bench - {report['scenario']}: {report.get('features', '')}, "
                 f"{report['connections']} connections{rate}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


HEADER = ("| scenario | target | req/s | x direct | p50 us | p90 us | p99 us | added p50 | "
          "added p99 | CPU us/req | req/s per core | peak RSS MB | errors |")
RULE = "|" + "---|" * 13


def rows(report: dict) -> list[str]:
    out = []
    for target in _targets(report):
        r = report["results"][target]
        lat = r["latency_us"]
        added = r.get("added_latency_us", {})
        errors = sum(v for k, v in r.get("errors", {}).items()
                     if k != "status") + (r.get("errors", {}).get("status", 0))
        out.append("| " + " | ".join([
            report["scenario"], target, _fmt(float(r["rps"])),
            _fmt(r.get("rps_vs_direct"), 2) if target != "direct" else "1",
            _fmt(float(lat["p50"])), _fmt(float(lat["p90"])), _fmt(float(lat["p99"])),
            _fmt(added.get("p50")), _fmt(added.get("p99")),
            _fmt(r.get("cpu_us_per_req"), 1), _fmt(r.get("rps_per_core")),
            _fmt(r.get("peak_rss_mb"), 1), str(errors),
        ]) + " |")
    return out


def table(reports: list[dict]) -> str:
    lines = [HEADER, RULE]
    for report in reports:
        lines += rows(report)
    return "\n".join(lines)


def summary_markdown(reports: list[dict], meta: dict) -> str:
    lines = ["# RateGuard bench results", "",
             f"- command: `{meta.get('command', '')}`",
             f"- generator: {meta.get('generator', '')}; pinning: {meta.get('layout', {})}",
             f"- machine: {meta.get('machine', {})}",
             f"- measured: {meta.get('revision') or 'unknown revision'}", "",
             table(reports), ""]
    for report in reports:
        for target, r in report["results"].items():
            if r.get("memory_timeline"):
                lines.append(f"Proxy memory over time ({report['scenario']}):")
                lines.append("")
                lines.append("| phase | requests so far | RSS MB | peak RSS MB |")
                lines.append("|---|---|---|---|")
                for point in r["memory_timeline"]:
                    lines.append(f"| {point['phase']} | {point['requests_total']:,} | "
                                 f"{point.get('rss_kb', 0) / 1024:.1f} | "
                                 f"{point.get('peak_rss_kb', 0) / 1024:.1f} |")
                lines.append("")
            if r.get("events"):
                lines.append(f"Events ({report['scenario']}, {target}): {r['events']}")
                lines.append("")
    return "\n".join(lines)
