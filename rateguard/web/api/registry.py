"""The management API, declared once: each operation's method, path, who may call it,
what it takes and what it answers. The router and the OpenAPI document are both built
from this table, so the document cannot drift from the server.

Access levels: ``public`` (no token), ``user`` (any signed-in user), and the workspace
roles ``viewer`` < ``admin`` < ``owner`` for paths under ``/workspaces/{workspace_id}``.
A caller who is not a member of the workspace gets 404, exactly as for a workspace that
does not exist; a member whose role is too low gets 403.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from rateguard.db.errors import ControlError, Forbidden, Invalid, NotFound, Unauthorized
from rateguard.db.repository import ROLE_RANK, Actor, Repository
from rateguard.db.validate import printable
from rateguard.web.auth import Tokens, bearer

log = logging.getLogger(__name__)

PREFIX = "/api/v1"

REPO = web.AppKey("repo", Repository)
TOKENS = web.AppKey("tokens", Tokens)
CLICKHOUSE = web.AppKey("clickhouse", object)
CLICKHOUSE_DB = web.AppKey("clickhouse_db", str)


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict
    description: str = ""
    required: bool = False


@dataclass
class Operation:
    method: str
    path: str  # below /api/v1
    handler: Callable[["Ctx"], Awaitable[Any]]
    summary: str
    tag: str
    access: str
    status: int
    response: dict | None
    request: dict | None
    request_required: bool
    query: tuple[Param, ...]
    errors: tuple[int, ...] = field(default=())

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    @property
    def in_workspace(self) -> bool:
        return "{workspace_id}" in self.path


OPERATIONS: list[Operation] = []


def op(method: str, path: str, *, summary: str, tag: str, access: str = "viewer",
       status: int = 200, response: dict | None = None, request: dict | None = None,
       request_required: bool = True, query: tuple[Param, ...] = (),
       errors: tuple[int, ...] = ()):
    """Declare a handler as an operation of the API."""
    def register(fn):
        OPERATIONS.append(Operation(method, path, fn, summary, tag, access, status, response,
                                    request, request_required, query, errors))
        return fn
    return register


@dataclass
class Ctx:
    request: web.Request
    repo: Repository
    user: dict | None = None
    session_id: str | None = None
    role: str | None = None
    body: Any = None

    @property
    def workspace_id(self) -> str:
        return self.request.match_info["workspace_id"]

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def actor(self) -> Actor:
        return Actor(self.user["id"], self.user["email"])

    def query_int(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.request.query.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise Invalid(name, "must be an integer") from None
        if not low <= value <= high:
            raise Invalid(name, f"must be from {low} to {high}")
        return value

    def query_str(self, name: str, max_len: int = 64) -> str | None:
        raw = self.request.query.get(name)
        if raw is not None and not 1 <= len(raw) <= max_len:
            raise Invalid(name, f"must be 1 to {max_len} characters")
        if raw is not None and (not printable(raw) or _has_surrogate(raw)):
            raise Invalid(name, "must be printable text (no NUL or control characters)")
        return raw


def _default(value: Any) -> Any:
    raise TypeError(f"cannot serialize {type(value).__name__}")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data, default=_default),
                        content_type="application/json")


def error_response(status: int, error: str, message: str, field_name: str | None = None,
                   headers: dict | None = None) -> web.Response:
    body = {"error": error, "message": message}
    if field_name:
        body["field"] = field_name
    response = json_response(body, status)
    if headers:
        response.headers.update(headers)
    return response


async def _authenticate(ctx: Ctx, tokens: Tokens) -> None:
    token = bearer(ctx.request.headers.get("Authorization"))
    if token is None:
        raise Unauthorized("sign in: send Authorization: Bearer <access token>")
    user_id, session_id = tokens.verify(token)
    user = await ctx.repo.session_user(session_id, user_id)
    if user is None:
        raise Unauthorized("session has ended; sign in again")
    ctx.user, ctx.session_id = user, session_id


async def _read_body(ctx: Ctx, operation: Operation) -> None:
    raw = await ctx.request.read()
    if not raw.strip():
        if operation.request_required:
            raise ControlError("request body: a JSON object is required")
        ctx.body = None
        return
    try:
        ctx.body = json.loads(raw, parse_constant=_non_finite)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ControlError("request body: not valid JSON") from None
    try:
        ctx.body = _check_values(ctx.body, "body")
    except RecursionError:
        raise ControlError("request body: nested too deeply") from None


def _non_finite(constant: str) -> float:
    """NaN, Infinity and -Infinity (which Python's json reads) become floats that
    :func:`_check_values` then refuses naming the field."""
    return float(constant.replace("Infinity", "inf"))


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_values(value: Any, where: str) -> Any:
    """Refuse, anywhere in a JSON body, what no field can hold: numbers that are not
    finite (NaN, Infinity, 1e999), strings with a NUL (PostgreSQL text cannot store one)
    or a lone UTF-16 surrogate (\\ud800: not a character, cannot be encoded). Returns the
    body with whole-number floats as integers: JSON Schema's ``integer`` includes 3.0."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid(where, "must be a finite number (NaN and Infinity are not accepted)")
        return int(value) if value.is_integer() else value
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, list):
        return [_check_values(item, f"{where}[{i}]") for i, item in enumerate(value)]
    elif isinstance(value, dict):
        for name in value:
            _check_text(name, where)
        return {name: _check_values(item, name if where == "body" else f"{where}.{name}")
                for name, item in value.items()}
    return value


def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise Invalid(where, "must not contain NUL characters (\\u0000)")
    if _has_surrogate(value):
        raise Invalid(where, "must be valid Unicode text (a lone surrogate such as \\ud800 "
                             "is not a character)")


def handler_for(operation: Operation):
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = Ctx(request, request.app[REPO])
        if any("\x00" in value for value in request.match_info.values()):
            raise NotFound("not found")  # PostgreSQL text cannot hold NUL: no such id
        if operation.access != "public":
            await _authenticate(ctx, request.app[TOKENS])
        if operation.in_workspace:
            ctx.role = await ctx.repo.role_of(ctx.workspace_id, ctx.user["id"])
            if ctx.role is None:
                raise NotFound("workspace not found")
            if operation.access in ROLE_RANK and \
                    ROLE_RANK[ctx.role] < ROLE_RANK[operation.access]:
                raise Forbidden(f"this needs the {operation.access} role in the workspace; "
                                f"you are {ctx.role}")
        if operation.request is not None:
            await _read_body(ctx, operation)
        result = await operation.handler(ctx)
        if isinstance(result, web.StreamResponse):
            return result
        if operation.status == 204:
            return web.Response(status=204)
        return json_response(result, operation.status)

    handle.__name__ = operation.operation_id
    return handle


@web.middleware
async def errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControlError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if getattr(exc, "retry_after", None):
            headers = {"Retry-After": str(exc.retry_after)}
        return error_response(exc.status, exc.code, exc.message, exc.field, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed",
                413: "payload_too_large"}.get(exc.status, "bad_request")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, exc.reason, headers=headers)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal", "internal error; the server log has details")


def add_routes(app: web.Application) -> None:
    # Import the modules that declare operations (each registers on import).
    from rateguard.web.api import accounts, analytics, gateway, workspaces  # noqa: F401
    from rateguard.alerts import api as alerts_api  # noqa: F401
    from rateguard.web.api.openapi import openapi_handler

    for operation in OPERATIONS:
        app.router.add_route(operation.method, PREFIX + operation.path, handler_for(operation))
    app.router.add_get(PREFIX + "/openapi.json", openapi_handler)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
