"""Template filters: times, durations and numbers as people read them."""

from __future__ import annotations

from datetime import datetime, timezone


def dt(moment: datetime | None, empty: str = "—") -> str:
    if moment is None:
        return empty
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def ago(moment: datetime | None, empty: str = "never") -> str:
    if moment is None:
        return empty
    seconds = (datetime.now(timezone.utc) - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            text = f"{int(seconds // size)} {unit}"
            break
    else:
        return "just now" if not future else "in under a minute"
    return f"in {text}" if future else f"{text} ago"


def num(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def pct(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0%"
    if value < 0.001:
        return "<0.1%"
    return f"{value * 100:.1f}%"


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def compact(detail: dict | None) -> str:
    if not detail:
        return ""
    parts = []
    for key, value in detail.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "none"
        elif value is None:
            value = "none"
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        parts.append(f"{key}: {value}")
    return "; ".join(parts)
