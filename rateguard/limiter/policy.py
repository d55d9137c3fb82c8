"""Policies and decisions: pure data and arithmetic, no I/O.

A policy is one or more limits (``100/s``, ``5000/h``), a scope (whose requests share a
counter), a mode (``enforce`` or ``shadow``), an algorithm and a failure mode for when
Redis cannot answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rateguard.errors import ConfigError

SCOPES = ("key", "ip", "api")
MODES = ("enforce", "shadow")
ALGORITHMS = ("sliding_window", "sliding_log")
FAILURE_MODES = ("open", "closed")

# The Lua script's short algorithm names.
SCRIPT_ALGORITHM = {"sliding_window": "sw", "sliding_log": "log"}

_UNITS_MS = {
    "ms": 1, "s": 1000, "sec": 1000, "second": 1000, "seconds": 1000,
    "m": 60_000, "min": 60_000, "minute": 60_000, "minutes": 60_000,
    "h": 3_600_000, "hour": 3_600_000, "hours": 3_600_000,
    "d": 86_400_000, "day": 86_400_000, "days": 86_400_000,
}
# ASCII digits only (``\d`` would take other scripts' digits, which ``int`` accepts); the
# whole text is at most MAX_LIMIT_TEXT characters, so ``int`` never meets a huge number.
_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$", re.ASCII)
# What the parser took before the bounds (any script's digits, any length): read only
# to clamp policies stored back then (see stored_policy).
_STORED_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")

# The bounds every limit is checked against, wherever it comes from (management API,
# dashboard, YAML, PostgreSQL rows, settings). They keep every figure the Lua script
# returns well inside a 64-bit integer (Redis truncates Lua numbers to one), the
# counts exact in Lua's doubles, and one key's memory bounded; the README's "Rate-limit
# semantics" section states them.
MAX_COUNT = 1_000_000_000
MIN_WINDOW_MS = 100
MAX_WINDOW_MS = 366 * 86_400_000
MAX_LIMITS = 10
# sliding_log keeps one sorted-set entry per admitted request for a whole window:
# about 90 bytes each in Valkey (measured: see README), so 100,000 is ~9 MB per key.
MAX_LOG_COUNT = 100_000
MAX_LIMIT_TEXT = 64


@dataclass(frozen=True, slots=True)
class Limit:
    count: int
    window_ms: int

    @property
    def window_label(self) -> str:
        """Short, stable window name used in Redis keys: ``1s``, ``60s``, ``250ms``."""
        if self.window_ms % 1000 == 0:
            return f"{self.window_ms // 1000}s"
        return f"{self.window_ms}ms"

    def __str__(self) -> str:
        return f"{self.count}/{self.window_label}"


def _count_and_window(text: str, pattern: re.Pattern) -> tuple[int, int]:
    """A limit's count and window in milliseconds as written, not yet bounded."""
    match = pattern.match(text.lower())
    if not match:
        raise ConfigError(f"limit {text!r}: expected <count>/<window>, e.g. 100/s or 5000/h")
    count, multiple, unit = match[1], match[2], match[3]
    if unit not in _UNITS_MS:
        raise ConfigError(f"limit {text!r}: unknown unit {unit!r} (use ms, s, m, h or d)")
    try:
        return int(count), _UNITS_MS[unit] * (int(multiple) if multiple else 1)
    except ValueError:  # more digits than int() reads
        raise ConfigError(f"limit {text!r}: expected <count>/<window>, "
                          "e.g. 100/s or 5000/h") from None


def _out_of_range(count: int, window_ms: int) -> str | None:
    """What is wrong with a limit's figures, against the bounds above; None if nothing."""
    if not 1 <= count <= MAX_COUNT:
        return f"count must be between 1 and {MAX_COUNT:,}"
    if not MIN_WINDOW_MS <= window_ms <= MAX_WINDOW_MS:
        return f"window must be between {MIN_WINDOW_MS} ms and 366 days"
    return None


def parse_limit(text: str) -> Limit:
    """``"100/s"``, ``"5000/h"``, ``"10/5m"``, ``"20/minute"`` -> Limit, within the bounds
    above (the one validator of limits: every source of policies calls it)."""
    if not isinstance(text, str) or len(text) > MAX_LIMIT_TEXT:
        raise ConfigError(f"limit {str(text)[:MAX_LIMIT_TEXT]!r}: expected <count>/<window>, "
                          "e.g. 100/s or 5000/h")
    count, window = _count_and_window(text, _LIMIT)
    problem = _out_of_range(count, window)
    if problem is not None:
        raise ConfigError(f"limit {text!r}: {problem}")
    return Limit(count, window)


def stored_policy(id: str, workspace_id: str, limits: list[str], **fields) -> tuple[Policy, str]:
    """A policy saved before the bounds above existed, made valid: counts and windows
    clamped into range (``99999999999999999999999/s`` limited nothing and ``1000000000/s``
    limits nothing either; ``1/99999999999999999999d`` becomes ``1/366d``), and a
    ``sliding_log`` count above its bound served by ``sliding_window``, which keeps the
    count. Returns the policy and what was changed ("" when it was valid as stored), so
    one stored row can never stop a snapshot from loading for every workspace."""
    try:
        return Policy(id, workspace_id, tuple(parse_limit(item) for item in limits),
                      **fields), ""
    except ConfigError as exc:
        problem = str(exc)
    clamped = []
    for item in limits:
        try:
            count, window = _count_and_window(str(item), _STORED_LIMIT)
        except ConfigError:
            continue  # never accepted by any version of the parser: dropped
        clamped.append(Limit(min(max(count, 1), MAX_COUNT),
                             min(max(window, MIN_WINDOW_MS), MAX_WINDOW_MS)))
    by_window = {}
    for limit in clamped:  # clamping may have put two limits on one window: keep the lower
        if limit.window_ms not in by_window or limit.count < by_window[limit.window_ms].count:
            by_window[limit.window_ms] = limit
    clamped = sorted(by_window.values(), key=lambda limit: limit.window_ms)[:MAX_LIMITS]
    if not clamped:
        clamped = [Limit(1, MAX_WINDOW_MS)]  # nothing readable: refuse rather than open
    if fields.get("algorithm") == "sliding_log" and any(
            limit.count > MAX_LOG_COUNT for limit in clamped):
        fields = {**fields, "algorithm": "sliding_window"}
    return Policy(id, workspace_id, tuple(clamped), **fields), problem


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    workspace_id: str
    limits: tuple[Limit, ...]
    scope: str = "key"
    mode: str = "enforce"
    algorithm: str = "sliding_window"
    failure_mode: str = "open"
    # Derived once, used on every response.
    header: str = field(init=False, default="")
    header_bytes: bytes = field(init=False, default=b"")
    script_args: tuple = field(init=False, default=())
    # Everything that decides this policy's Redis keys and script arguments, as one
    # string: the stores and the limiter key their per-policy caches by it, so a policy
    # edited in place (same id, other limits) never meets the old entries.
    fingerprint: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if not self.limits:
            raise ConfigError(f"policy {self.id!r}: needs at least one limit")
        if len(self.limits) > MAX_LIMITS:
            raise ConfigError(f"policy {self.id!r}: at most {MAX_LIMITS} limits")
        for name, value, allowed in (
            ("scope", self.scope, SCOPES),
            ("mode", self.mode, MODES),
            ("algorithm", self.algorithm, ALGORITHMS),
            ("failure_mode", self.failure_mode, FAILURE_MODES),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"policy {self.id!r}: {name} {value!r} is not one of {', '.join(allowed)}")
        for limit in self.limits:
            problem = _out_of_range(limit.count, limit.window_ms) \
                if isinstance(limit, Limit) else "not a Limit"
            if problem is not None:
                raise ConfigError(f"policy {self.id!r}: limit {limit} is out of range "
                                  f"({problem})")
            if self.algorithm == "sliding_log" and limit.count > MAX_LOG_COUNT:
                raise ConfigError(
                    f"policy {self.id!r}: limit {limit}: sliding_log keeps one entry per "
                    f"admitted request, so its count is at most {MAX_LOG_COUNT:,} (about "
                    "10 MB of Redis per key); use sliding_window for larger limits")
        windows = [limit.window_ms for limit in self.limits]
        if len(set(windows)) != len(windows):
            raise ConfigError(f"policy {self.id!r}: two limits share a window")
        object.__setattr__(self, "header", policy_header(self.limits))
        object.__setattr__(self, "header_bytes", self.header.encode())
        args: list = [SCRIPT_ALGORITHM[self.algorithm], 1]
        for limit in self.limits:
            args += [limit.count, limit.window_ms]
        object.__setattr__(self, "script_args", tuple(args))
        object.__setattr__(self, "fingerprint", "|".join(
            (self.key_prefix(""), *map(str, args))))

    @property
    def shadow(self) -> bool:
        return self.mode == "shadow"

    def key_prefix(self, scope_value: str) -> str:
        """``rg:{<workspace>}:rl:<policy>:<algorithm>:<scope>:<value>:``. The algorithm
        and the scope are part of the name: an edit that changes either starts on fresh
        keys (the old ones expire by their TTL), so no call ever meets another
        algorithm's data type (WRONGTYPE) or another scope's counts. An edit of the
        counts keeps the keys, and with them what was already counted."""
        return (f"rg:{{{self.workspace_id}}}:rl:{self.id}:"
                f"{SCRIPT_ALGORITHM[self.algorithm]}:{self.scope}:{scope_value}:")

    def redis_keys(self, scope_value: str) -> list[str]:
        """The keys of this policy for one scope value: one counter per limit, and for
        ``sliding_log`` a last key, the sequence that names its entries."""
        prefix = self.key_prefix(scope_value)
        keys = [prefix + limit.window_label for limit in self.limits]
        if self.algorithm == "sliding_log":
            keys.append(prefix + "seq")
        return keys


def policy_header(limits: tuple[Limit, ...]) -> str:
    """``RateLimit-Policy`` value: ``100;w=1, 5000;w=3600`` (window in seconds)."""
    return ", ".join(
        f"{limit.count};w={_seconds(limit.window_ms)}" for limit in limits)


def _seconds(window_ms: int) -> str:
    if window_ms % 1000 == 0:
        return str(window_ms // 1000)
    return f"{window_ms / 1000:g}"


@dataclass(slots=True)
class Decision:
    """The limiter's answer for one request under one policy."""

    allowed: bool
    limit: Limit
    remaining: int
    reset_ms: int
    retry_after_ms: int

    @property
    def reset_seconds(self) -> int:
        """``RateLimit-Reset``. On a refusal it is ``Retry-After``, to the second: the
        quota this request needs is back exactly then, and the two headers of one 429
        never disagree."""
        if not self.allowed:
            return self.retry_after_seconds
        reset_ms = self.reset_ms
        return -(-reset_ms // 1000) if reset_ms > 0 else 0

    @property
    def retry_after_seconds(self) -> int:
        retry_ms = self.retry_after_ms
        return -(-retry_ms // 1000) if retry_ms > 1000 else 1


def decision_from_reply(policy: Policy, reply: list) -> Decision:
    """Turn the Lua script's reply ``[allowed, index, remaining, reset, retry]``
    into a Decision."""
    allowed, index, remaining, reset_ms, retry_ms = reply
    return Decision(allowed == 1, policy.limits[index - 1], remaining, reset_ms, retry_ms)
