"""Validation of what clients send: pure functions from a JSON body to clean values.

Each raises :class:`Invalid` naming the first bad field (``limits[1]``,
``upstream_headers.X-Token``). Unknown fields are refused too, so a typo never silently
does nothing. Policies reuse the limiter's own ``parse_limit`` and ``Policy``; APIs reuse
the snapshot's ``Upstream.parse``: what passes here is what the proxy can load.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from rateguard.db.errors import Invalid
from rateguard.errors import ConfigError
from rateguard.limiter.policy import ALGORITHMS, FAILURE_MODES, MODES, SCOPES, Policy, parse_limit
from rateguard.net.egress import ALWAYS, EgressPolicy
from rateguard.proxy.routing import safe_path
from rateguard.snapshot.model import Upstream

ROLES = ("owner", "admin", "viewer")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_PREFIX = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
# Headers the proxy itself controls: an API may not inject them.
_RESERVED_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
                     "upgrade", "proxy-connection", "content-length", "x-request-id",
                     "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
MAX_OVERLAP_SECONDS = 30 * 86400
# What printable text refuses: control (Cc), format (Cf: zero-width and bidirectional
# controls), surrogate (Cs) and separator characters (Zl, Zp, and Zs but the space).
# Private-use characters and those this Python's Unicode tables do not know yet (an emoji
# newer than them) are text: str.isprintable would refuse them. The OpenAPI document
# states the same set (web/api/schemas.py, NOT_TEXT).
NOT_TEXT_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Zs"})


def printable(value: str) -> bool:
    """True when ``value`` holds no control, format, surrogate or separator character
    (the space excepted)."""
    return value.isprintable() or all(
        ch == " " or unicodedata.category(ch) not in NOT_TEXT_CATEGORIES for ch in value)


def body_object(body: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(body, dict):
        raise Invalid("body", "must be a JSON object")
    for name in sorted(set(body) - allowed):
        raise Invalid(name, "unknown field")
    for name in sorted(required - set(body)):
        raise Invalid(name, "is required")
    return body


def text(body: dict, name: str, *, max_len: int = 100, min_len: int = 1,
         required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise Invalid(name, "is required")
        return None
    if not isinstance(value, str):
        raise Invalid(name, "must be a string")
    value = value.strip()
    if not printable(value):
        raise Invalid(name, "must not contain control characters")
    if not min_len <= len(value) <= max_len:
        raise Invalid(name, f"must be {min_len} to {max_len} characters")
    return value


def optional_id(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or "\x00" in value:
        raise Invalid(name, "must be an id or null")
    return value


def choice(body: dict, name: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    value = body.get(name, default)
    if value not in allowed:
        raise Invalid(name, f"must be one of {', '.join(allowed)}")
    return value


def email(body: dict, name: str = "email") -> str:
    value = text(body, name, max_len=254, min_len=3)
    if not _EMAIL.match(value):
        raise Invalid(name, "is not an email address")
    return value.lower()


def password(body: dict, name: str = "password") -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise Invalid(name, "is required and must be a string")
    if not 8 <= len(value) <= 256:
        raise Invalid(name, "must be 8 to 256 characters")
    return value


def timestamp(body: dict, name: str) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(name, "must be an ISO 8601 timestamp or null")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(name, "must be an ISO 8601 timestamp such as 2030-01-01T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:  # 9999-12-31T23:59:59-05:00 is past the last instant a timestamp can hold
        moment = moment.astimezone(timezone.utc)
    except OverflowError:
        raise Invalid(name, "is out of range: years 1 to 9999 in UTC") from None
    return moment


def positive_number(body: dict, name: str, *, integer: bool = False,
                    maximum: float | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0 \
            or (isinstance(value, float) and not math.isfinite(value)):
        raise Invalid(name, f"must be a positive {'integer' if integer else 'number'} or null")
    if maximum is not None and value > maximum:
        raise Invalid(name, f"must be at most {maximum:g}")
    return value


# -- resources ---------------------------------------------------------------------------

POLICY_FIELDS = {"name", "limits", "scope", "mode", "algorithm", "failure_mode"}


def policy(body: Any, current: dict | None = None) -> dict:
    """A policy to create (current None) or the merged result of a partial update."""
    body = body_object(body, POLICY_FIELDS, set() if current else {"name", "limits"})
    merged = {**(current or {}), **body}
    name = text(merged, "name")
    limits = merged.get("limits")
    if not isinstance(limits, list) or not limits:
        raise Invalid("limits", "must be a non-empty list such as [\"100/s\", \"5000/h\"]")
    if len(limits) > 10:
        raise Invalid("limits", "at most 10 limits")
    parsed, texts = [], []
    for i, item in enumerate(limits):
        if not isinstance(item, str):
            raise Invalid(f"limits[{i}]", "must be a string such as \"100/s\"")
        try:
            parsed.append(parse_limit(item))
            texts.append(" ".join(item.lower().split()))
        except ConfigError as exc:
            raise Invalid(f"limits[{i}]", str(exc)) from None
    clean = {
        "name": name,
        "limits": texts,
        "scope": choice(merged, "scope", SCOPES, "key"),
        "mode": choice(merged, "mode", MODES, "enforce"),
        "algorithm": choice(merged, "algorithm", ALGORITHMS, "sliding_window"),
        "failure_mode": choice(merged, "failure_mode", FAILURE_MODES, "open"),
    }
    try:
        Policy(id="check", workspace_id="check", limits=tuple(parsed), scope=clean["scope"],
               mode=clean["mode"], algorithm=clean["algorithm"],
               failure_mode=clean["failure_mode"])
    except ConfigError as exc:
        raise Invalid("limits", str(exc).split(": ", 1)[-1]) from None
    return clean


API_FIELDS = {"name", "host", "prefix", "upstream_url", "strip_prefix", "policy_id",
              "timeout_seconds", "max_body_bytes", "upstream_headers"}


def api(body: Any, current: dict | None = None, egress: EgressPolicy = ALWAYS) -> dict:
    """An API to create, or the merged result of a partial update. ``upstream_headers``
    is only in the result when the body sets it (values are secrets, stored encrypted)."""
    body = body_object(body, API_FIELDS,
                       set() if current else {"name", "prefix", "upstream_url"})
    merged = {**(current or {}), **body}
    host = merged.get("host")
    if host is not None:
        if not isinstance(host, str) or not _HOST.match(host.strip().lower()):
            raise Invalid("host", "must be a host name such as api.example.com, or null for any")
        host = host.strip().lower()
    prefix = merged.get("prefix")
    if not isinstance(prefix, str) or not _PREFIX.match(prefix) or ".." in prefix \
            or "//" in prefix or len(prefix) > 200:
        raise Invalid("prefix", "must be a path starting with '/' such as /orders")
    if not safe_path(prefix):
        raise Invalid("prefix", "must not hold '.' or '..' segments, also percent-encoded "
                                "(/%2e%2e): the proxy refuses such paths, so it could never match")
    prefix = prefix.rstrip("/") or "/"
    upstream = merged.get("upstream_url")
    if not isinstance(upstream, str) or len(upstream) > 2000 or not upstream.isprintable():
        raise Invalid("upstream_url", "must be a URL such as http://orders.internal:8080/v1")
    if current is not None and upstream == current.get("upstream_url"):
        egress = ALWAYS  # unchanged: only a new destination meets the production rule
    try:
        refused = egress.check_host(urlsplit(upstream).hostname or "")
        if refused is None:
            Upstream.parse(upstream, egress)
    except (ConfigError, ValueError):
        raise Invalid("upstream_url", "must be http(s)://host[:port][/path]") from None
    if refused is not None:
        raise Invalid("upstream_url", refused)
    strip = merged.get("strip_prefix", True)
    if not isinstance(strip, bool):
        raise Invalid("strip_prefix", "must be true or false")
    clean = {
        "name": text(merged, "name"),
        "host": host,
        "prefix": prefix,
        "upstream_url": upstream,
        "strip_prefix": strip,
        "policy_id": optional_id(merged, "policy_id"),
        "timeout_seconds": positive_number(merged, "timeout_seconds", maximum=3600),
        "max_body_bytes": positive_number(merged, "max_body_bytes", integer=True,
                                          maximum=2**40),
    }
    if "upstream_headers" in body:
        clean["upstream_headers"] = upstream_headers(body["upstream_headers"])
    return clean


def route_host(value: Any) -> str:
    """A host an operator assigns to a workspace (lowercase), or '*' for any host."""
    host = value.strip().lower() if isinstance(value, str) else None
    if host != "*" and (host is None or not _HOST.match(host)):
        raise Invalid("host", "must be a host name such as api.example.com, or '*' for "
                              "the any-host routes")
    return host


def upstream_headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid("upstream_headers", "must be an object of header name to value")
    if len(value) > 20:
        raise Invalid("upstream_headers", "at most 20 headers")
    seen = set()
    for name, header_value in value.items():
        where = f"upstream_headers.{name}"
        if not _HEADER.match(name):
            raise Invalid(where, "is not a valid header name")
        if name.lower() in _RESERVED_HEADERS:
            raise Invalid(where, "is set by the proxy itself")
        if name.lower() in seen:
            raise Invalid(where, "is given twice")
        seen.add(name.lower())
        if not isinstance(header_value, str) or len(header_value) > 8192 or any(
                ch in header_value for ch in "\r\n\x00") or not printable(header_value):
            raise Invalid(where, "must be printable text of at most 8192 characters")
    return dict(value)


KEY_FIELDS = {"name", "policy_id", "expires_at"}


def key(body: Any, now: datetime) -> dict:
    body = body_object(body, KEY_FIELDS, {"name"})
    expires = timestamp(body, "expires_at")
    if expires is not None and expires <= now:
        raise Invalid("expires_at", "must be in the future")
    return {"name": text(body, "name"), "policy_id": optional_id(body, "policy_id"),
            "expires_at": expires}


def roll(body: Any) -> int:
    body = body_object(body if body is not None else {}, {"overlap_seconds"})
    value = body.get("overlap_seconds", 3600)
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 <= value <= MAX_OVERLAP_SECONDS:
        raise Invalid("overlap_seconds", f"must be an integer from 0 to {MAX_OVERLAP_SECONDS}")
    return value
