"""Usage analytics of a workspace (or one of its APIs) over a time range, from ClickHouse.

Counts and latency come from the per-minute rollup (``api_events_minute``); top keys and
top paths from the raw events (``api_events``). Every query is filtered by the
workspace id of the URL, which the caller has been checked to belong to.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rateguard.db.errors import ControlError, Invalid
from rateguard.web.api import schemas as s
from rateguard.web.api.registry import CLICKHOUSE, CLICKHOUSE_DB, Ctx, Param, op

MAX_RANGE = timedelta(days=400)
RANGE = (
    Param("from", {"type": "string", "format": "date-time"},
          "start (default: an hour before 'to'); before 'to', at most 400 days before it, "
          "from 2000-01-01 to 9000-12-31"),
    Param("to", {"type": "string", "format": "date-time"},
          "end (default: now); from 2000-01-01 to 9000-12-31"),
    Param("api_id", s.QUERY_ID, "only this API"),
)
STEP = Param("step", {"type": "integer", "minimum": 60, "maximum": 86400, "multipleOf": 60},
             "bucket width in seconds, a multiple of 60 (default: about 60 buckets)")
TOP = Param("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
            "how many rows")
DECISIONS = ("allowed", "limited", "shadow_limited", "unauthorized", "error")


class AnalyticsUnavailable(ControlError):
    status = 503
    code = "analytics_unavailable"


def _moment(ctx: Ctx, name: str) -> datetime | None:
    raw = ctx.request.query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(name, "must be an ISO 8601 timestamp such as 2030-01-01T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        moment = moment.astimezone(timezone.utc)
    except OverflowError:  # 9999-12-31T23:00:00-05:00 is past the last representable instant
        moment = None
    if moment is None or not 2000 <= moment.year <= 9000:
        raise Invalid(name, "must be between 2000-01-01 and 9000-12-31") from None
    return moment


class Window:
    def __init__(self, ctx: Ctx, with_step: bool = False) -> None:
        to = _moment(ctx, "to") or datetime.now(timezone.utc)
        start = _moment(ctx, "from") or to - timedelta(hours=1)
        if start >= to:
            raise Invalid("from", "must be before 'to'")
        if to - start > MAX_RANGE:
            raise Invalid("from", f"the range is at most {MAX_RANGE.days} days")
        if start.year < 2000 or to.year > 9000:
            raise Invalid("from", "out of range")
        self.start, self.to = start, to
        self.api_id = ctx.query_str("api_id")
        span = (to - start).total_seconds()
        self.step = 60
        if with_step:
            default = max(60, int(span // 60) // 60 * 60)
            self.step = ctx.query_int("step", min(default, 86400), 60, 86400)
            if self.step % 60:
                raise Invalid("step", "must be a multiple of 60")
        self.params = {"ws": ctx.workspace_id, "api": self.api_id or "",
                       "from_ms": int(start.timestamp() * 1000),
                       "to_ms": int(to.timestamp() * 1000), "step": self.step}

    def where(self, time_column: str) -> str:
        return (f"workspace_id = {{ws:String}} AND {time_column} >= "
                "fromUnixTimestamp64Milli({from_ms:Int64}) AND "
                f"{time_column} < fromUnixTimestamp64Milli({{to_ms:Int64}})"
                + (" AND api_id = {api:String}" if self.api_id else ""))

    def out(self) -> dict:
        return {"from": self.start, "to": self.to}


async def _query(ctx: Ctx, sql: str, params: dict) -> list:
    clickhouse = ctx.request.app.get(CLICKHOUSE)
    if clickhouse is None:
        raise AnalyticsUnavailable("analytics are not configured (set CLICKHOUSE_URL)")
    try:
        _columns, rows = await clickhouse.query(sql, params)
    except Exception as exc:  # the server is down or the tables are missing
        raise AnalyticsUnavailable(f"ClickHouse did not answer: {type(exc).__name__}") from None
    return rows


def _table(ctx: Ctx, name: str) -> str:
    return f"{ctx.request.app[CLICKHOUSE_DB]}.{name}"


def _ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(int(seconds), timezone.utc)


ERRORS = (422, 503)


@op("GET", "/workspaces/{workspace_id}/analytics/requests", summary="Requests over time "
    "by status class (2xx, 4xx, ...).", tag="analytics", query=RANGE + (STEP,),
    response=s.ref("RequestsOverTime"), errors=ERRORS)
async def analytics_requests(ctx: Ctx):
    window = Window(ctx, with_step=True)
    rows = await _query(ctx, (
        "SELECT toUnixTimestamp(toStartOfInterval(minute, toIntervalSecond({step:UInt32})))"
        " AS t, status_class, sum(requests) FROM " + _table(ctx, "api_events_minute") +
        " WHERE " + window.where("minute") + " GROUP BY t, status_class ORDER BY t"),
        window.params)
    buckets: dict[int, dict] = {}
    for t, status_class, count in rows:
        bucket = buckets.setdefault(int(t), {"ts": _ts(t), "total": 0, "1xx": 0, "2xx": 0,
                                             "3xx": 0, "4xx": 0, "5xx": 0})
        bucket["total"] += int(count)
        if 1 <= int(status_class) <= 5:
            bucket[f"{int(status_class)}xx"] += int(count)
    return {**window.out(), "step_seconds": window.step, "buckets": list(buckets.values())}


@op("GET", "/workspaces/{workspace_id}/analytics/latency", summary="Latency percentiles "
    "(p50, p95, p99, milliseconds) over the range and per bucket.", tag="analytics",
    query=RANGE + (STEP,), response=s.ref("Latency"), errors=ERRORS)
async def analytics_latency(ctx: Ctx):
    window = Window(ctx, with_step=True)
    table = _table(ctx, "api_events_minute")
    rows = await _query(ctx, (
        "SELECT toUnixTimestamp(toStartOfInterval(minute, toIntervalSecond({step:UInt32})))"
        " AS t, quantilesMerge(0.5, 0.95, 0.99)(latency) FROM " + table +
        " WHERE " + window.where("minute") + " GROUP BY t ORDER BY t"), window.params)
    total = await _query(ctx, (
        "SELECT quantilesMerge(0.5, 0.95, 0.99)(latency), sum(requests) FROM " + table +
        " WHERE " + window.where("minute")), window.params)
    overall = {"p50": None, "p95": None, "p99": None}
    if total and total[0][1]:
        overall = dict(zip(("p50", "p95", "p99"), (round(float(v), 3) for v in total[0][0])))
    return {**window.out(), "step_seconds": window.step, **overall, "buckets": [
        {"ts": _ts(t), **dict(zip(("p50", "p95", "p99"), (round(float(v), 3) for v in q)))}
        for t, q in rows]}


@op("GET", "/workspaces/{workspace_id}/analytics/decisions", summary="Requests by the "
    "gateway's decision: allowed, limited, shadow-limited, unauthorized, error.",
    tag="analytics", query=RANGE, response=s.ref("Decisions"), errors=ERRORS)
async def analytics_decisions(ctx: Ctx):
    window = Window(ctx)
    rows = await _query(ctx, (
        "SELECT decision, sum(requests) FROM " + _table(ctx, "api_events_minute") +
        " WHERE " + window.where("minute") + " GROUP BY decision"), window.params)
    out = {**window.out(), "total": 0, **{d: 0 for d in DECISIONS}}
    for decision, count in rows:
        out["total"] += int(count)
        if decision in DECISIONS:
            out[decision] += int(count)
    return out


@op("GET", "/workspaces/{workspace_id}/analytics/top-keys", summary="The keys with the "
    "most requests.", tag="analytics", query=RANGE + (TOP,), response=s.ref("TopKeys"),
    errors=ERRORS)
async def analytics_top_keys(ctx: Ctx):
    window = Window(ctx)
    limit = ctx.query_int("limit", 10, 1, 100)
    rows = await _query(ctx, (
        "SELECT key_id, count() AS requests, countIf(decision = 'limited'),"
        " countIf(status >= 500) FROM " + _table(ctx, "api_events") +
        " WHERE " + window.where("ts") + " AND key_id != '' GROUP BY key_id"
        " ORDER BY requests DESC, key_id LIMIT {limit:UInt32}"), {**window.params, "limit": limit})
    names = await ctx.repo.pool.fetch(
        "SELECT id, name, prefix FROM api_keys WHERE workspace_id = $1 AND id = ANY($2)",
        ctx.workspace_id, [r[0] for r in rows])
    by_id = {r["id"]: r for r in names}
    return {**window.out(), "items": [
        {"key_id": key_id, "name": by_id[key_id]["name"] if key_id in by_id else None,
         "prefix": by_id[key_id]["prefix"] if key_id in by_id else None,
         "requests": int(n), "limited": int(limited), "errors": int(errors)}
        for key_id, n, limited, errors in rows]}


@op("GET", "/workspaces/{workspace_id}/analytics/top-paths", summary="The paths with the "
    "most requests.", tag="analytics", query=RANGE + (TOP,), response=s.ref("TopPaths"),
    errors=ERRORS)
async def analytics_top_paths(ctx: Ctx):
    window = Window(ctx)
    limit = ctx.query_int("limit", 10, 1, 100)
    rows = await _query(ctx, (
        "SELECT api_id, path, count() AS requests, countIf(status >= 500),"
        " quantile(0.95)(latency_ms) FROM " + _table(ctx, "api_events") +
        " WHERE " + window.where("ts") + " GROUP BY api_id, path"
        " ORDER BY requests DESC, api_id, path LIMIT {limit:UInt32}"),
        {**window.params, "limit": limit})
    return {**window.out(), "items": [
        {"api_id": api_id, "path": path, "requests": int(n), "errors": int(errors),
         "p95_ms": round(float(p95), 3)} for api_id, path, n, errors, p95 in rows]}
