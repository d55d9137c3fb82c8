"""Hand-written SVG charts, rendered on the server: no charting library, no CDN.

Each chart is drawn twice, wide (desktop) and narrow (phones); the stylesheet shows the
one that fits. Colours come from CSS classes (``s-2xx``, ``s-p95`` ...), shared with the
HTML legends. Every chart has a y axis with a unit, a time x axis (UTC) and <title>
tooltips per bar or point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from markupsafe import Markup, escape

WIDE = (820, 250)
NARROW = (360, 230)
MARGIN = {"left": 54, "right": 18, "top": 22, "bottom": 24}
TIME_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
              172800, 604800)


@dataclass(frozen=True)
class Series:
    key: str
    label: str


def fmt(value: float) -> str:
    """A short number for an axis or a tooltip: 0, 0.25, 12, 1.5k, 2M."""
    if value == 0:
        return "0"
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e4:
        return f"{value / 1e3:.3g}k"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 1:
        return f"{value:.3g}"
    return f"{value:.2g}"


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """0 and evenly spaced round values up to at least ``top``."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-12:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def time_label(ts: int, span: int) -> str:
    moment = datetime.fromtimestamp(ts, timezone.utc)
    if span > 2 * 86400:
        return moment.strftime("%b %d") if moment.hour == 0 and moment.minute == 0 \
            else moment.strftime("%a %H:%M")
    return moment.strftime("%H:%M")


def _time_ticks(start: int, end: int, slots: int) -> list[int]:
    span = max(end - start, 60)
    step = next((s for s in TIME_STEPS if span / s <= slots), TIME_STEPS[-1])
    first = -(-start // step) * step
    return list(range(first, end + 1, step))


class _Frame:
    """A plot area with a y scale from 0 to the top tick and a time x scale."""

    def __init__(self, size: tuple[int, int], start: int, end: int, top: float,
                 unit: str) -> None:
        self.width, self.height = size
        self.x0, self.x1 = MARGIN["left"], self.width - MARGIN["right"]
        self.y0, self.y1 = self.height - MARGIN["bottom"], MARGIN["top"]
        self.start, self.end = start, max(end, start + 1)
        self.ticks = nice_ticks(top, 4 if self.height > 240 else 3)
        self.top = self.ticks[-1]
        self.unit = unit
        self.parts: list[str] = []

    def x(self, ts: float) -> float:
        return self.x0 + (ts - self.start) / (self.end - self.start) * (self.x1 - self.x0)

    def y(self, value: float) -> float:
        return self.y0 - value / self.top * (self.y0 - self.y1)

    def axes(self) -> None:
        p = self.parts
        for tick in self.ticks:
            y = self.y(tick)
            p.append(f'<line class="grid" x1="{self.x0}" x2="{self.x1}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/>')
            p.append(f'<text class="ylabel" x="{self.x0 - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{escape(fmt(tick))}</text>')
        p.append(f'<text class="unit" x="{self.x0 - 6}" y="{self.y1 - 9}" '
                 f'text-anchor="end">{escape(self.unit)}</text>')
        p.append(f'<line class="axis" x1="{self.x0}" x2="{self.x1}" y1="{self.y0}" '
                 f'y2="{self.y0}"/>')
        p.append(f'<line class="axis" x1="{self.x0}" x2="{self.x0}" y1="{self.y1}" '
                 f'y2="{self.y0}"/>')
        slots = 7 if self.width > 500 else 3
        span = self.end - self.start
        for ts in _time_ticks(self.start, self.end, slots):
            x = self.x(ts)
            p.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{self.y0}" '
                     f'y2="{self.y0 + 4}"/>')
            p.append(f'<text class="xlabel" x="{x:.1f}" y="{self.y0 + 17}" '
                     f'text-anchor="middle">{escape(time_label(ts, span))}</text>')
        p.append(f'<text class="unit" x="{self.x1}" y="{self.y1 - 9}" '
                 'text-anchor="end">time (UTC)</text>')

    def empty(self, message: str) -> None:
        self.parts.append(
            f'<text class="empty" x="{(self.x0 + self.x1) / 2:.1f}" '
            f'y="{(self.y0 + self.y1) / 2:.1f}" text-anchor="middle">{escape(message)}</text>')

    def svg(self, label: str, variant: str) -> str:
        return (f'<svg class="chart chart-{variant}" viewBox="0 0 {self.width} {self.height}" '
                f'role="img" aria-label="{escape(label)}" '
                f'xmlns="http://www.w3.org/2000/svg">' + "".join(self.parts) + "</svg>")


def stacked_bars(label: str, rows: Sequence[tuple[int, dict]], series: Sequence[Series],
                 start: int, end: int, step: int, unit: str, empty: str) -> Markup:
    """``rows``: (bucket start, {series key: value}) for every bucket, in order."""
    top = max((sum(values.get(s.key, 0) for s in series) for _, values in rows), default=0)
    out = []
    for variant, size in (("wide", WIDE), ("narrow", NARROW)):
        frame = _Frame(size, start, end, top, unit)
        frame.axes()
        slot = frame.x(start + step) - frame.x(start)
        width = max(slot * 0.78, 1.0)
        for ts, values in rows:
            base = 0.0
            x = frame.x(ts) + (slot - width) / 2
            tip = [f"{time_label(ts, end - start)} UTC"] + [
                f"{s.label}: {fmt(values.get(s.key, 0))} {unit}" for s in series
                if values.get(s.key, 0)]
            pieces = []
            for s in series:
                value = values.get(s.key, 0)
                if value <= 0:
                    continue
                y_top, y_base = frame.y(base + value), frame.y(base)
                pieces.append(f'<rect class="s-{s.key}" x="{x:.1f}" y="{y_top:.1f}" '
                              f'width="{width:.1f}" height="{max(y_base - y_top, 0.5):.1f}"/>')
                base += value
            if pieces:
                frame.parts.append(f'<g class="bar"><title>{escape(" · ".join(tip))}</title>'
                                   + "".join(pieces) + "</g>")
        if top <= 0:
            frame.empty(empty)
        out.append(frame.svg(label, variant))
    return Markup("".join(out))


def lines(label: str, rows: Sequence[tuple[int, dict]], series: Sequence[Series],
          start: int, end: int, step: int, unit: str, empty: str) -> Markup:
    """``rows``: (bucket start, {series key: value or None}); a None leaves a gap."""
    top = max((v for _, values in rows for v in values.values() if v is not None), default=0)
    out = []
    for variant, size in (("wide", WIDE), ("narrow", NARROW)):
        frame = _Frame(size, start, end, top * 1.05, unit)
        frame.axes()
        half = (frame.x(start + step) - frame.x(start)) / 2
        for s in series:
            runs: list[list[tuple[float, float, int, float]]] = [[]]
            for ts, values in rows:
                value = values.get(s.key)
                if value is None:
                    if runs[-1]:
                        runs.append([])
                    continue
                runs[-1].append((frame.x(ts) + half, frame.y(value), ts, value))
            for run in runs:
                if len(run) > 1:
                    points = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in run)
                    frame.parts.append(f'<polyline class="line s-{s.key}" points="{points}"/>')
                for x, y, ts, value in run:
                    frame.parts.append(
                        f'<circle class="dot s-{s.key}" cx="{x:.1f}" cy="{y:.1f}" r="2.6">'
                        f'<title>{escape(time_label(ts, end - start))} UTC · {s.label}: '
                        f'{escape(fmt(value))} {escape(unit)}</title></circle>')
        if top <= 0:
            frame.empty(empty)
        out.append(frame.svg(label, variant))
    return Markup("".join(out))
