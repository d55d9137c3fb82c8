"""Recovering an account (README "Security"): change the password, list and end sessions,
sign out everywhere, reset a password with a one-time link, and (instance operators)
disable and enable users.

Every access token and dashboard cookie names a session, and every request looks the
session and its user up (registry._authenticate, pages' ``_current``): ending a session
or disabling a user refuses the next request at once, not when a token expires.
"""

from __future__ import annotations

import logging

from rateguard.db import validate
from rateguard.db.errors import Forbidden, Invalid
from rateguard.web.api import schemas as s
from rateguard.web.api.registry import Ctx, op
from rateguard.web.throttle import THROTTLE

log = logging.getLogger(__name__)

SESSION_INFO = s.obj({
    "id": s.ID, "created_at": s.TIME, "last_used_at": s.NULL_TIME, "expires_at": s.TIME,
    "user_agent": s.STR, "client_ip": s.STR,
    "current": {"type": "boolean", "description": "the session of this access token"},
})
SESSIONS = s.obj({"items": {"type": "array", "items": SESSION_INFO}})
ENDED = s.obj({"sessions_ended": s.INT})
ADMIN_USER = s.obj({
    "id": s.ID, "email": s.STR, "name": s.STR, "created_at": s.TIME,
    "disabled_at": s.NULL_TIME, "operator": {"type": "boolean"},
    "sessions": {**s.INT, "description": "active sessions"},
}, ["id", "email", "name", "created_at", "disabled_at", "operator"])
ADMIN_USERS = s.obj({"items": {"type": "array", "items": ADMIN_USER}})
PASSWORD = {"type": "string", "minLength": 8, "maxLength": 256}
PASSWORD_CHANGE = s.obj({"current_password": {"type": "string", "minLength": 1,
                                              "maxLength": 256},
                         "new_password": PASSWORD})
PASSWORD_RESET = s.obj({"token": s.TOKEN, "password": PASSWORD})


def client_ip(ctx: Ctx) -> str:
    return ctx.request.remote or ""


async def _throttle(ctx: Ctx, account: str) -> None:
    throttle = ctx.request.app.get(THROTTLE)
    if throttle is not None:
        await throttle.check(client_ip(ctx), account)


@op("POST", "/me/password", summary="Change the signed-in user's password (the current one "
    "is required). Every other session of the user ends; this one stays.", tag="accounts",
    access="user", request=PASSWORD_CHANGE, response=ENDED, errors=(400, 422, 429))
async def change_password(ctx: Ctx):
    body = validate.body_object(ctx.body, {"current_password", "new_password"},
                                {"current_password", "new_password"})
    current = body["current_password"]
    if not isinstance(current, str) or not 1 <= len(current) <= 256:
        raise Invalid("current_password", "must be a non-empty string")
    new = validate.password(body, "new_password")
    if new == current:
        raise Invalid("new_password", "must differ from the current password")
    # a stolen access token must not become a way to guess the password: the attempts
    # count against the same budget as sign-ins
    await _throttle(ctx, ctx.user["email"])
    try:
        ended = await ctx.repo.change_password(ctx.user["id"], ctx.session_id, current, new)
    except Invalid:
        log.warning("password change refused (wrong current password) for user %s from %s",
                    ctx.user["id"], client_ip(ctx))
        raise
    return {"sessions_ended": ended}


@op("GET", "/me/sessions", summary="The signed-in user's active sessions (sign-ins), newest "
    "first.", tag="accounts", access="user", response=SESSIONS)
async def list_sessions(ctx: Ctx):
    return {"items": await ctx.repo.list_sessions(ctx.user["id"], ctx.session_id)}


@op("POST", "/me/sessions/{session_id}/revoke", summary="End one of the signed-in user's "
    "sessions: its access and refresh tokens stop working at once.", tag="accounts",
    access="user", status=204, errors=(404,))
async def end_session(ctx: Ctx):
    await ctx.repo.end_session(ctx.user["id"], ctx.path("session_id"))


@op("POST", "/auth/logout-all", summary="Sign out everywhere: end every session of the "
    "signed-in user, this one included.", tag="accounts", access="user", response=ENDED)
async def logout_all(ctx: Ctx):
    return {"sessions_ended": await ctx.repo.end_all_sessions(ctx.user["id"])}


@op("POST", "/auth/reset-password", summary="Set a new password with a one-time reset token "
    "(from `rateguard users reset-password`); every session of the user ends.",
    tag="accounts", access="public", request=PASSWORD_RESET, status=204,
    errors=(400, 422, 429))
async def reset_password(ctx: Ctx):
    body = validate.body_object(ctx.body, {"token", "password"}, {"token", "password"})
    token = body["token"]
    if not isinstance(token, str) or not 1 <= len(token) <= 200:
        raise Invalid("token", "must be a reset token")
    password = validate.password(body)
    await _throttle(ctx, "password-reset")
    try:
        await ctx.repo.reset_password(token, password)
    except Invalid:
        log.warning("password reset refused (unknown, used or expired token) from %s",
                    client_ip(ctx))
        raise


# -- instance operators ----------------------------------------------------------------

async def _operator(ctx: Ctx) -> None:
    if not await ctx.repo.is_operator(ctx.user["id"]):
        raise Forbidden("only an instance operator can do this (granted with "
                        "`rateguard users operator EMAIL`)")


@op("GET", "/users", summary="Every user of this instance (instance operators only).",
    tag="operators", access="user", response=ADMIN_USERS, errors=(403,))
async def list_users(ctx: Ctx):
    await _operator(ctx)
    return {"items": await ctx.repo.list_users()}


@op("POST", "/users/{user_id}/disable", summary="Disable a user (instance operators only): "
    "sign-in is refused and every session ends at once.", tag="operators", access="user",
    response=ADMIN_USER, errors=(403, 404, 409))
async def disable_user(ctx: Ctx):
    await _operator(ctx)
    return await ctx.repo.set_disabled(ctx.actor, ctx.path("user_id"), True)


@op("POST", "/users/{user_id}/enable", summary="Enable a disabled user again (instance "
    "operators only).", tag="operators", access="user", response=ADMIN_USER,
    errors=(403, 404))
async def enable_user(ctx: Ctx):
    await _operator(ctx)
    return await ctx.repo.set_disabled(ctx.actor, ctx.path("user_id"), False)
