"""Sign-up, login, token refresh, logout, the caller's profile, invitations accepted."""

from __future__ import annotations

import hashlib
import logging

from rateguard.db import validate
from aiohttp import web

from rateguard.db.errors import Forbidden, Invalid, Unauthorized
from rateguard.web.api import schemas as s
from rateguard.web.api.registry import TOKENS, Ctx, op
from rateguard.web.throttle import THROTTLE

log = logging.getLogger(__name__)

SIGNUP_MODE = web.AppKey("signup_mode", str)  # open | invite | closed (setting SIGNUP)
SIGNUP_CLOSED = ("sign-up is closed on this instance; an operator creates accounts with "
                 "`rateguard users create`")
SIGNUP_INVITE_ONLY = ("sign-up needs an invitation on this instance; ask a workspace owner "
                      "or admin to invite you")


def signup_mode(app: web.Application) -> str:
    return app.get(SIGNUP_MODE, "open")


async def _new_session(ctx: Ctx, user_id: str) -> tuple[str, str]:
    return await ctx.repo.create_session(
        user_id, ctx.request.headers.get("User-Agent", ""), ctx.request.remote or "")


def account_tag(email: str) -> str:
    """How logs name an account: a digest, so a password typed into the email field
    never reaches a log."""
    return "sha256:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:12]


async def _session(ctx: Ctx, user: dict, session_id: str, refresh: str,
                   workspace: dict | None = None) -> dict:
    tokens = ctx.request.app[TOKENS]
    out = {"access_token": tokens.issue(user["id"], session_id), "refresh_token": refresh,
           "token_type": "Bearer", "expires_in": tokens.ttl, "user": user}
    if workspace is not None:
        out["workspace"] = workspace
    return out


@op("POST", "/auth/signup", summary="Create an account. Without an invitation the new user "
    "owns a new workspace; with one, they join its workspace.", tag="accounts",
    access="public", status=201, request=s.SIGNUP, response=s.ref("Session"),
    errors=(400, 403, 409, 422, 429))
async def signup(ctx: Ctx):
    mode = signup_mode(ctx.request.app)
    if mode == "closed":
        raise Forbidden(SIGNUP_CLOSED)
    throttle = ctx.request.app.get(THROTTLE)
    if throttle is not None:
        await throttle.check_signup(ctx.request.remote or "")
    body = validate.body_object(ctx.body, set(s.SIGNUP["properties"]), {"email", "password"})
    invitation = body.get("invitation")
    if invitation is not None and (not isinstance(invitation, str) or len(invitation) > 200):
        raise Invalid("invitation", "must be an invitation token")
    if mode == "invite" and not invitation:
        raise Forbidden(SIGNUP_INVITE_ONLY)
    user, workspace, _role = await ctx.repo.signup(
        validate.email(body), validate.password(body),
        validate.text(body, "name", min_len=0, required=False) or "",
        validate.text(body, "workspace_name", required=False), invitation)
    session_id, refresh = await _new_session(ctx, user["id"])
    return await _session(ctx, user, session_id, refresh, workspace)


@op("POST", "/auth/login", summary="Sign in with email and password (argon2id).",
    tag="accounts", access="public", request=s.LOGIN, response=s.ref("Session"),
    errors=(400, 401, 422, 429))
async def login(ctx: Ctx):
    body = validate.body_object(ctx.body, {"email", "password"}, {"email", "password"})
    for name in ("email", "password"):
        if not isinstance(body[name], str) or not 1 <= len(body[name]) <= 256 \
                or "\x00" in body[name]:
            raise Invalid(name, "must be a non-empty string")
    throttle = ctx.request.app.get(THROTTLE)
    if throttle is not None:
        await throttle.check(ctx.request.remote or "", body["email"])
    try:
        user = await ctx.repo.authenticate(body["email"].strip(), body["password"])
    except Unauthorized:
        log.warning("sign-in failed: account %s from %s", account_tag(body["email"]),
                    ctx.request.remote or "-")
        raise
    session_id, refresh = await _new_session(ctx, user["id"])
    return await _session(ctx, user, session_id, refresh)


@op("POST", "/auth/refresh", summary="Trade a refresh token for a new access token and a "
    "new refresh token (the old one stops working).", tag="accounts", access="public",
    request=s.REFRESH, response=s.ref("Session"), errors=(400, 401, 422))
async def refresh(ctx: Ctx):
    body = validate.body_object(ctx.body, {"refresh_token"}, {"refresh_token"})
    token = body["refresh_token"]
    if not isinstance(token, str) or not 1 <= len(token) <= 200:
        raise Invalid("refresh_token", "must be a refresh token")
    user_id, session_id, new_refresh = await ctx.repo.refresh_session(token)
    user = await ctx.repo.session_user(session_id, user_id)
    return await _session(ctx, user, session_id, new_refresh)


@op("POST", "/auth/logout", summary="End this session: its access and refresh tokens stop "
    "working at once.", tag="accounts", access="user", status=204)
async def logout(ctx: Ctx):
    await ctx.repo.revoke_session(ctx.session_id)


@op("GET", "/me", summary="The signed-in user and their workspaces.", tag="accounts",
    access="user", response=s.ref("Me"))
async def me(ctx: Ctx):
    return {"user": ctx.user, "workspaces": await ctx.repo.list_workspaces(ctx.user["id"])}


@op("POST", "/invitations/accept", summary="Join the workspace of an invitation sent to "
    "the signed-in user's email address.", tag="accounts", access="user", request=s.ACCEPT,
    response=s.ref("Workspace"), errors=(400, 409, 422))
async def accept_invitation(ctx: Ctx):
    body = validate.body_object(ctx.body, {"token"}, {"token"})
    if not isinstance(body["token"], str) or not 1 <= len(body["token"]) <= 200:
        raise Invalid("token", "must be an invitation token")
    return await ctx.repo.accept_invitation(ctx.user["id"], body["token"])


from rateguard.web.api import recovery  # noqa: E402,F401  (registers its operations)
