"""The account pages: change the password, see and end sessions, sign out everywhere
(/account), a one-time reset link (/reset-password), and the instance operator's list of
users (/users). Each calls the management API's operations (web/api/recovery.py)."""

from __future__ import annotations

from aiohttp import web

from rateguard.db.errors import ControlError, Invalid
from rateguard.web.api.registry import REPO
from rateguard.web.pages import ops
from rateguard.web.pages.views import (
    SESSIONS, View, _anon_form, _auth_page, error_page, page, redirect,
)

DONE = {
    "session-ended": "Session ended. Its tokens stopped working at once.",
    "user-disabled": "User disabled. Every session ended.",
    "user-enabled": "User enabled.",
}


async def _account(view: View, status: int = 200, error=None, done: str | None = None):
    sessions = (await view.op("list_sessions"))["items"]
    operator = await view.request.app[REPO].is_operator(view.user["id"])
    return view.render("account.html", status, sessions=sessions, error=error,
                       operator=operator,
                       done=done or DONE.get(view.request.query.get("done", "")))


@page(workspace=False)
async def account(view: View) -> web.StreamResponse:
    if view.request.method == "POST":
        form = view.form
        if form.get("new_password", "") != form.get("confirm_password", ""):
            error = Invalid("confirm_password", "the two new passwords differ")
            return await _account(view, 422, error)
        try:
            result = await view.op("change_password", body={
                "current_password": form.get("current_password", ""),
                "new_password": form.get("new_password", "")})
        except ControlError as exc:
            return await _account(view, exc.status, exc)
        ended = result["sessions_ended"]
        return await _account(view, done=f"Password changed. {ended} other session"
                                         f"{'' if ended == 1 else 's'} signed out.")
    return await _account(view)


@page(workspace=False)
async def end_session(view: View) -> web.StreamResponse:
    await view.op("end_session")
    raise redirect("/account?done=session-ended")


@page(workspace=False)
async def signout_everywhere(view: View) -> web.StreamResponse:
    await view.op("logout_all")
    response = web.HTTPSeeOther("/signin")
    view.request.app[SESSIONS].sign_out(response)
    return response


async def reset_password(request: web.Request) -> web.StreamResponse:
    if request.method == "GET":
        return _auth_page(request, "reset_password.html", token=request.query.get("token", ""),
                          finished=False)
    form, ok = await _anon_form(request)
    token = form.get("token", "")
    if not ok:
        return _auth_page(request, "reset_password.html", 403, token=token, finished=False,
                          error="The form expired. Please try again.")
    if form.get("password", "") != form.get("confirm_password", ""):
        return _auth_page(request, "reset_password.html", 422, token=token, finished=False,
                          error="The two passwords differ.")
    try:
        await ops.call(request, "reset_password", body={"token": token,
                                                        "password": form.get("password", "")})
    except ControlError as exc:
        return _auth_page(request, "reset_password.html", exc.status, token=token,
                          finished=False, error=exc.message)
    response = _auth_page(request, "reset_password.html", token="", finished=True)
    request.app[SESSIONS].sign_out(response)
    return response


@page(workspace=False)
async def users(view: View) -> web.StreamResponse:
    items = (await view.op("list_users"))["items"]
    return view.render("users.html", users=items,
                       done=DONE.get(view.request.query.get("done", "")))


@page(workspace=False)
async def user_update(view: View) -> web.StreamResponse:
    action = view.form.get("action")
    if action not in ("disable", "enable"):
        return error_page(view.request, 422, "That did not work", "Unknown action.", view)
    await view.op("disable_user" if action == "disable" else "enable_user")
    raise redirect(f"/users?done=user-{action}d")


def routes() -> list[tuple[tuple[str, ...], str, object]]:
    both = ("GET", "POST")
    return [(both, "/account", account),
            (("POST",), "/account/sessions/{session_id}/end", end_session),
            (("POST",), "/account/signout-all", signout_everywhere),
            (both, "/reset-password", reset_password),
            (("GET",), "/users", users),
            (("POST",), "/users/{user_id}", user_update)]
