"""schemathesis hooks for `schemathesis run` against a served `rateguard web` (loaded
with SCHEMATHESIS_HOOKS by tests/integration/test_web_schemathesis.py).

Auth: every access token comes from POST /auth/refresh with the previous refresh token
(which rotates), never from logging in again: the refresh path is exercised for real,
and the login throttle is never in the way. The generated workspace id is replaced by the
signed-in owner's, so cases reach the handlers rather than stopping at 404.

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
WORKSPACE = os.environ.get("RG_ST_WORKSPACE", "")


@schemathesis.auth(refresh_interval=120)
class RefreshingAuth:
    """Trades the current refresh token for a new access + refresh token pair."""

    def __init__(self) -> None:
        self.refresh_token = os.environ.get("RG_ST_REFRESH", "")
        self.lock = threading.Lock()
        self.refreshes = 0

    def get(self, case, context):
        with self.lock:
            request = urllib.request.Request(
                BASE + "/api/v1/auth/refresh", method="POST",
                data=json.dumps({"refresh_token": self.refresh_token}).encode(),
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                session = json.load(response)
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


# Rules the document states in descriptions because no schema can: generated cases that
# break them are not sent (the server refuses them with a 422 naming the field).

def _moment(text):
    from datetime import datetime, timezone
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


@schemathesis.hook("filter_body").apply_to(method="POST", path_regex=r"/keys$")
def future_expiry(context, body):
    from datetime import datetime, timezone
    if not isinstance(body, dict) or body.get("expires_at") is None:
        return True
    moment = _moment(body["expires_at"])
    return moment is None or moment > datetime.now(timezone.utc)


@schemathesis.hook("filter_body").apply_to(path_regex=r"/policies")
def distinct_windows(context, body):
    from rateguard.limiter.policy import parse_limit
    limits = body.get("limits") if isinstance(body, dict) else None
    if not isinstance(limits, list):
        return True
    try:
        windows = [parse_limit(item).window_ms for item in limits]
    except Exception:
        return True  # malformed: the server's answer is checked as usual
    return len(windows) == len(set(windows))


@schemathesis.hook("filter_query").apply_to(path_regex=r"/analytics/")
def analytics_range(context, query):
    from datetime import timedelta
    if not query:
        return True
    start, end = _moment(query.get("from")), _moment(query.get("to"))
    for moment in (start, end):
        if moment is not None and not 2000 <= moment.year <= 9000:
            return False
    if start is not None:
        from datetime import datetime, timezone
        end = end or datetime.now(timezone.utc)
        return start < end and end - start <= timedelta(days=400)
    return True
