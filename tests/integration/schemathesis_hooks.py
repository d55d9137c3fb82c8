"""schemathesis hooks for `schemathesis run` against a served `rateguard web` (loaded
with SCHEMATHESIS_HOOKS by tests/integration/test_web_schemathesis.py).

Auth: every access token comes from POST /auth/refresh with the previous refresh token
(which rotates), never from logging in again: the refresh path is exercised for real,
and the login throttle is never in the way. Only the operations that end sessions
(logout, sign out everywhere, end a session) get a throwaway account's session instead,
so the owner's survives them. The generated workspace id is replaced by the signed-in
owner's, so cases reach the handlers rather than stopping at 404.

Filters: positive cases that break a rule the document can only describe are not sent
(see the filter_case hooks below); negative cases are all sent.

Settings come from the environment: RG_ST_BASE (http://host:port), RG_ST_REFRESH (a
refresh token of the owner's session) and RG_ST_WORKSPACE.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request

import schemathesis

BASE = os.environ.get("RG_ST_BASE", "")


def _serialise_ast_parse() -> None:
    """The run uses two workers (threads). On CPython 3.11.7 `ast.parse` called from two
    threads at once can fail ("SystemError: AST constructor recursion depth mismatch",
    seen in this run), which hypothesis does when it describes a filter's lambda: one
    parse at a time."""
    import ast

    parse, lock = ast.parse, threading.Lock()

    def serialised(*args, **kwargs):
        with lock:
            return parse(*args, **kwargs)

    ast.parse = serialised


_serialise_ast_parse()
WORKSPACE = os.environ.get("RG_ST_WORKSPACE", "")


# Operations that end the caller's session(s): each case gets a session of its own, a
# throwaway account made with POST /auth/signup, so the owner's session (refreshed by
# RefreshingAuth) survives them. The session id a stateful link may carry from
# GET /me/sessions then names another user's session: 404, as documented.
SESSION_ENDING = ["logout", "logout_all", "end_session"]


def _post(path, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(BASE + path, method="POST", headers=headers,
                                     data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@schemathesis.auth(refresh_interval=None).apply_to(operation_id=SESSION_ENDING)
class ThrowawayAuth:
    """A new account's session for every case of an operation that ends sessions."""

    def __init__(self) -> None:
        self.made = 0
        self.lock = threading.Lock()

    def get(self, case, context):
        with self.lock:
            self.made += 1
            email = f"throwaway-{os.getpid()}-{self.made}@example.com"
        return _post("/api/v1/auth/signup", {"email": email,
                                              "password": "throwaway password"})["access_token"]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.auth(refresh_interval=120).skip_for(operation_id=SESSION_ENDING)
class RefreshingAuth:
    """Trades the current refresh token for a new access + refresh token pair."""

    def __init__(self) -> None:
        self.refresh_token = os.environ.get("RG_ST_REFRESH", "")
        self.lock = threading.Lock()
        self.refreshes = 0

    def get(self, case, context):
        with self.lock:
            session = _post("/api/v1/auth/refresh", {"refresh_token": self.refresh_token})
            self.refresh_token = session["refresh_token"]
            self.refreshes += 1
            return session["access_token"]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.hook
def map_path_parameters(context, path_parameters):
    if path_parameters and "workspace_id" in path_parameters and WORKSPACE:
        path_parameters["workspace_id"] = WORKSPACE
    return path_parameters


# Rules the document states in descriptions because no schema can (a future expiry, limits
# in range and on distinct windows, analytics ranges): schema-valid cases that break them
# are not sent as positive data (the server refuses them with a 422 naming the field).
# They are `filter_case` hooks because the coverage phase applies only those; they judge
# positive cases only, so negative cases keep every value the generators find. Each
# rule is the server's own check, applied only once the schema's syntax holds, so a
# disagreement between the document and the parser is still reported.

def _positive(case) -> bool:
    meta = getattr(case, "meta", None)
    generation = getattr(meta, "generation", None)
    mode = getattr(generation, "mode", None)
    return mode is None or mode.is_positive


def _moment(text):
    from datetime import datetime, timezone
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


@schemathesis.hook("filter_case").apply_to(operation_id="create_key")
def future_expiry(context, case):
    """expires_at: in the future and at most 9999-12-31T23:59:59Z once in UTC."""
    from datetime import datetime, timezone
    body = case.body
    if not _positive(case) or not isinstance(body, dict) or not isinstance(
            body.get("expires_at"), str):
        return True
    moment = _moment(body["expires_at"])
    if moment is None:  # past the last instant, or unreadable (judged by the server)
        return not _overflows(body["expires_at"])
    return moment > datetime.now(timezone.utc)


def _overflows(text):
    """True for a valid date-time past the last instant once in UTC (9999-12-31 in -05:00),
    False for text Python cannot read at all (left for the server to judge)."""
    from datetime import datetime
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return False
    return moment.year == 9999 or moment.year == 1


@schemathesis.hook("filter_case").apply_to(operation_id=["create_policy", "update_policy"])
def limits_in_range(context, case):
    """Every limit within the bounds (count 1 to 10^9, window 100 ms to 366 days; at most
    100,000 for sliding_log) and no two limits on one window."""
    from rateguard.errors import ConfigError
    from rateguard.limiter.policy import MAX_LOG_COUNT, parse_limit
    from rateguard.web.api.schemas import LIMIT_SYNTAX
    body = case.body
    limits = body.get("limits") if isinstance(body, dict) else None
    if not _positive(case) or not isinstance(limits, list):
        return True
    import re
    if not all(isinstance(item, str) and re.search(LIMIT_SYNTAX, item) for item in limits):
        return True  # off the documented syntax: the server's answer is checked as usual
    try:
        parsed = [parse_limit(item) for item in limits]
    except ConfigError:
        return False  # a count or window out of range
    if body.get("algorithm") == "sliding_log" and any(
            limit.count > MAX_LOG_COUNT for limit in parsed):
        return False
    windows = [limit.window_ms for limit in parsed]
    return len(windows) == len(set(windows))


@schemathesis.hook("filter_case").apply_to(operation_id_regex="^analytics_")
def analytics_range(context, case):
    """from/to in 2000..9000 (in UTC), from before to, at most 400 days apart."""
    from datetime import datetime, timedelta, timezone
    query = case.query
    if not _positive(case) or not isinstance(query, dict):
        return True
    raw = {name: query.get(name) for name in ("from", "to")}
    moments = {}
    for name, text in raw.items():
        if text is None:
            continue
        moment = _moment(text)
        if moment is None:
            if _overflows(text):
                return False
            return True  # unreadable: the server's answer is checked as usual
        if not 2000 <= moment.year <= 9000:
            return False
        moments[name] = moment
    end = moments.get("to") or datetime.now(timezone.utc)
    start = moments.get("from") or end - timedelta(hours=1)
    return start < end and end - start <= timedelta(days=400) and start.year >= 2000


@schemathesis.hook("filter_case").apply_to(
    operation_id=["create_api", "update_api", "create_alert_channel"])
def egress_allows(context, case):
    """Destinations the egress policy refuses (net/egress.py, the one place that decides;
    the server runs in development: private addresses allowed): cloud metadata names and
    unroutable addresses, which the descriptions list."""
    from urllib.parse import urlsplit

    from rateguard.net.egress import ALWAYS
    body = case.body
    if not _positive(case) or not isinstance(body, dict):
        return True
    hosts = []
    for name in ("url", "upstream_url"):
        if isinstance(body.get(name), str):
            try:
                hosts.append(urlsplit(body[name]).hostname or "")
            except ValueError:
                pass
    if isinstance(body.get("host"), str) and body.get("kind") == "smtp":
        hosts.append(body["host"])
    return all(ALWAYS.check_host(host) is None for host in hosts)


@schemathesis.hook("filter_case").apply_to(operation_id=["create_api", "update_api"])
def header_names_once(context, case):
    """upstream_headers: each name at most once in any case (X-A and x-a are one)."""
    body = case.body
    headers = body.get("upstream_headers") if isinstance(body, dict) else None
    if not _positive(case) or not isinstance(headers, dict):
        return True
    return len({name.lower() for name in headers}) == len(headers)
