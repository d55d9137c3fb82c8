"""HTML form fields to the JSON bodies the management API's operations take.

Only shape conversion happens here (text to lists, numbers, booleans, null); every rule
about what is valid stays in rateguard/db/validate.py, reached through the operation.
A value that does not parse is passed on as text so the operation's validation names
the field in its message.
"""

from __future__ import annotations

import re
from typing import Any

from multidict import MultiDictProxy


def _text(form: MultiDictProxy, name: str) -> str:
    return (form.get(name) or "").strip()


def _opt(form: MultiDictProxy, name: str) -> str | None:
    return _text(form, name) or None


def _number(form: MultiDictProxy, name: str, kind=float) -> Any:
    raw = _text(form, name)
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        return raw


def limits(raw: str) -> list[str]:
    return [part for part in re.split(r"[,;\n]+", raw) if part.strip()]


def policy(form: MultiDictProxy) -> dict:
    return {"name": _text(form, "name"), "limits": limits(_text(form, "limits")),
            "scope": _text(form, "scope") or "key", "mode": _text(form, "mode") or "enforce",
            "algorithm": _text(form, "algorithm") or "sliding_window",
            "failure_mode": _text(form, "failure_mode") or "open"}


def headers(raw: str) -> dict[str, str] | str:
    """``Name: value`` lines; a line without a colon is passed on for validation."""
    out: dict[str, str] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return line.strip()
        out[name.strip()] = value.strip()
    return out


def api(form: MultiDictProxy) -> dict:
    body = {"name": _text(form, "name"), "host": _opt(form, "host"),
            "prefix": _text(form, "prefix"), "upstream_url": _text(form, "upstream_url"),
            "strip_prefix": form.get("strip_prefix") == "on",
            "policy_id": _opt(form, "policy_id"),
            "timeout_seconds": _number(form, "timeout_seconds"),
            "max_body_bytes": _number(form, "max_body_bytes", int)}
    if form.get("clear_headers") == "on":
        body["upstream_headers"] = {}
    elif _text(form, "upstream_headers"):
        body["upstream_headers"] = headers(_text(form, "upstream_headers"))
    return body


def key(form: MultiDictProxy) -> dict:
    expires = _text(form, "expires_at")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", expires):
        expires += "T00:00:00Z"
    return {"name": _text(form, "name"), "policy_id": _opt(form, "policy_id"),
            "expires_at": expires or None}


def roll(form: MultiDictProxy) -> dict:
    return {"overlap_seconds": _number(form, "overlap_seconds", int) or 0}


def invitation(form: MultiDictProxy) -> dict:
    return {"email": _text(form, "email"), "role": _text(form, "role") or "viewer"}


def rule(form: MultiDictProxy) -> dict:
    body = {"name": _text(form, "name"), "metric": _text(form, "metric"),
            "comparator": _text(form, "comparator") or "above",
            "threshold": _number(form, "threshold"),
            "window_seconds": _number(form, "window_seconds", int),
            "for_seconds": _number(form, "for_seconds", int) or 0,
            "api_id": _opt(form, "api_id"),
            "channel_ids": [c for c in form.getall("channel_ids", []) if c]}
    return body


def channel(form: MultiDictProxy) -> dict:
    return {"name": _text(form, "name"), "kind": _text(form, "kind") or "webhook",
            "url": _text(form, "url")}
