"""The dashboard's pages. Each handler reads or changes data only through the management
API's operations (see ops.py) and renders a template; a POST answers with a redirect
(303) or, when the operation refuses the input, the same form with the message."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import wraps
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from multidict import MultiDict

from rateguard.db.errors import ControlError, Forbidden, NotFound
from rateguard.limiter.policy import ALGORITHMS, FAILURE_MODES, MODES, SCOPES
from rateguard.web.api.registry import REPO, TOKENS
from rateguard.web.pages import charts, forms, ops
from rateguard.web.pages.session import WebSessions, same_origin
from rateguard.web.redirects import safe_next

log = logging.getLogger(__name__)

SESSIONS = web.AppKey("web_sessions", WebSessions)
JINJA = web.AppKey("jinja", object)

ROLES = ("viewer", "admin", "owner")
RANGES = {"15m": (900, 60), "1h": (3600, 60), "6h": (21600, 300), "24h": (86400, 1800),
          "7d": (7 * 86400, 10800)}
REFRESH = {"off": 0, "5s": 5, "30s": 30, "1m": 60}
STATUS_SERIES = [charts.Series("2xx", "2xx"), charts.Series("3xx", "3xx"),
                 charts.Series("4xx", "4xx"), charts.Series("5xx", "5xx"),
                 charts.Series("1xx", "1xx")]
LATENCY_SERIES = [charts.Series("p50", "p50"), charts.Series("p95", "p95"),
                  charts.Series("p99", "p99")]
DECISIONS = (("allowed", "Allowed"), ("limited", "Limited"),
             ("shadow_limited", "Shadow-limited"), ("unauthorized", "Unauthorized"),
             ("error", "Error"))
DONE = {
    "api-created": "API created. Create a key to call it through the proxy.",
    "api-saved": "API saved. The proxies apply it within seconds.",
    "api-deleted": "API deleted.",
    "policy-created": "Policy created. Attach it to an API or a key.",
    "policy-saved": "Policy saved. The proxies apply it within seconds.",
    "policy-deleted": "Policy deleted.",
    "key-revoked": "Key revoked. Every proxy refuses it within two seconds.",
    "member-saved": "Role changed.",
    "member-removed": "Member removed.",
    "invitation-withdrawn": "Invitation withdrawn.",
    "rule-created": "Alert rule created.",
    "rule-deleted": "Alert rule deleted.",
    "channel-deleted": "Channel removed.",
    "workspace-saved": "Workspace renamed.",
}


@dataclass
class View:
    request: web.Request
    user: dict
    session_id: str
    csrf: str
    workspaces: list[dict]
    workspace: dict | None = None
    role: str | None = None
    form: MultiDict = field(default_factory=MultiDict)

    async def op(self, operation_id: str, body: Any = None, query: dict | None = None) -> Any:
        return await ops.call(self.request, operation_id, user=self.user,
                              session_id=self.session_id, role=self.role, body=body,
                              query=query)

    def can(self, operation_id: str) -> bool:
        return ops.allowed(self.role, operation_id)

    def url(self, section: str = "") -> str:
        return f"/w/{self.workspace['id']}/{section}".rstrip("/")

    def render(self, template: str, status: int = 200, **context) -> web.Response:
        context.setdefault("done", DONE.get(self.request.query.get("done", "")))
        return render(self.request, template, status, view=self, csrf=self.csrf, **context)


def render(request: web.Request, template: str, status: int = 200, **context) -> web.Response:
    env = request.app[JINJA]
    html = env.get_template(template).render(request=request, **context)
    return web.Response(text=html, status=status, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def log_csrf_refusal(request: web.Request, user_id: str | None) -> None:
    """One line per refused form: what, from where, why; never the token or a field."""
    reason = "cross-origin" if not same_origin(request) else "missing or wrong CSRF token"
    log.warning("form refused (%s): %s %s from %s, %s", reason, request.method,
                request.path, request.remote or "-",
                f"user {user_id}" if user_id else "not signed in")


def redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


async def _current(request: web.Request) -> tuple[dict, str] | None:
    ident = request.app[SESSIONS].read(request)
    if ident is None:
        return None
    user = await request.app[REPO].session_user(ident[1], ident[0])
    return (user, ident[1]) if user else None


def error_page(request: web.Request, status: int, title: str, message: str,
               view: View | None = None) -> web.Response:
    if view is not None:
        return view.render("error.html", status, title=title, message=message)
    return render(request, "error.html", status, view=None, title=title, message=message,
                  csrf="", done=None)


def page(workspace: bool = True):
    """A signed-in page; with ``workspace``, under /w/{workspace_id} for a member."""
    def decorate(fn):
        @wraps(fn)
        async def handler(request: web.Request) -> web.StreamResponse:
            current = await _current(request)
            if current is None:
                target = request.path_qs if request.method == "GET" else "/"
                raise redirect("/signin?" + urlencode({"next": target}))
            user, session_id = current
            sessions = request.app[SESSIONS]
            view = View(request, user, session_id, sessions.csrf_for_session(session_id),
                        await request.app[REPO].list_workspaces(user["id"]))
            if workspace:
                wanted = request.match_info["workspace_id"]
                view.workspace = next((w for w in view.workspaces if w["id"] == wanted), None)
                if view.workspace is None:
                    return error_page(request, 404, "Workspace not found",
                                      "It does not exist, or you are not a member.", view)
                view.role = view.workspace["role"]
            if request.method == "POST":
                view.form = await request.post()
                if not same_origin(request) or not sessions.check(view.csrf,
                                                                  view.form.get("csrf")):
                    log_csrf_refusal(request, user["id"])
                    return error_page(request, 403, "Form expired",
                                      "Reload the page and submit the form again.", view)
            try:
                return await fn(view)
            except Forbidden as exc:
                return error_page(request, 403, "Not allowed", exc.message, view)
            except NotFound as exc:
                return error_page(request, 404, "Not found", exc.message, view)
            except ControlError as exc:
                return error_page(request, exc.status, "That did not work", exc.message, view)
        return handler
    return decorate


# -- signing in ------------------------------------------------------------------------

def _anon_csrf(request: web.Request) -> tuple[str, str | None]:
    return request.app[SESSIONS].anon_token(request)


def _auth_page(request: web.Request, template: str, status: int = 200,
               **context) -> web.Response:
    from rateguard.web.api.accounts import signup_mode

    token, fresh = _anon_csrf(request)
    context.setdefault("signup_mode", signup_mode(request.app))
    response = render(request, template, status, view=None, csrf=token, **context)
    if fresh:
        request.app[SESSIONS].set_anon(response, fresh)
    return response


def _safe_next(raw: str | None) -> str:
    return safe_next(raw)  # same-origin paths only (rateguard/web/redirects.py)


async def _start_session(request: web.Request, session: dict, target: str) -> web.Response:
    user_id, session_id = request.app[TOKENS].verify(session["access_token"])
    response = web.HTTPSeeOther(target)
    request.app[SESSIONS].sign_in(response, user_id, session_id)
    return response


async def _anon_form(request: web.Request):
    form = await request.post()
    token, _ = _anon_csrf(request)
    if not same_origin(request) or not request.app[SESSIONS].check(token, form.get("csrf")) \
            or not request.cookies.get("rg_csrf"):
        log_csrf_refusal(request, None)
        return form, False
    return form, True


async def signin(request: web.Request) -> web.StreamResponse:
    if request.method == "GET":
        if await _current(request):
            raise redirect(_safe_next(request.query.get("next")))
        return _auth_page(request, "signin.html", next=_safe_next(request.query.get("next")))
    form, ok = await _anon_form(request)
    target = _safe_next(form.get("next"))
    if not ok:
        return _auth_page(request, "signin.html", 403, next=target, email=form.get("email"),
                          error="The form expired. Please sign in again.")
    try:
        session = await ops.call(request, "login", body={
            "email": form.get("email", ""), "password": form.get("password", "")})
    except ControlError as exc:
        message = "Wrong email or password." if exc.status == 401 else exc.message
        return _auth_page(request, "signin.html", exc.status, next=target,
                          email=form.get("email"), error=message)
    return await _start_session(request, session, target)


async def signup(request: web.Request) -> web.StreamResponse:
    invitation = request.query.get("invitation")
    if request.method == "GET":
        return _auth_page(request, "signup.html", invitation=invitation, values={})
    form, ok = await _anon_form(request)
    if not ok:
        return _auth_page(request, "signup.html", 403, invitation=form.get("invitation"),
                          values=form, error="The form expired. Please try again.")
    body = {"email": form.get("email", ""), "password": form.get("password", ""),
            "name": form.get("name", "").strip()}
    if form.get("workspace_name", "").strip():
        body["workspace_name"] = form["workspace_name"].strip()
    if form.get("invitation"):
        body["invitation"] = form["invitation"]
    try:
        session = await ops.call(request, "signup", body=body)
    except ControlError as exc:
        return _auth_page(request, "signup.html", exc.status, values=form,
                          invitation=form.get("invitation"), error=exc.message)
    workspace = session.get("workspace") or {}
    target = f"/w/{workspace['id']}/apis?welcome=1" if workspace.get("id") else "/"
    return await _start_session(request, session, target)


@page(workspace=False)
async def signout(view: View) -> web.StreamResponse:
    await view.op("logout")
    response = web.HTTPSeeOther("/signin")
    view.request.app[SESSIONS].sign_out(response)
    return response


@page(workspace=False)
async def home(view: View) -> web.StreamResponse:
    if not view.workspaces:
        raise redirect("/workspaces/new")
    raise redirect(f"/w/{view.workspaces[0]['id']}/analytics")


@page()
async def workspace_home(view: View) -> web.StreamResponse:
    raise redirect(view.url("analytics"))


@page(workspace=False)
async def switch(view: View) -> web.StreamResponse:
    wanted = view.request.query.get("workspace", "")
    section = view.request.query.get("section", "analytics")
    if section not in NAV_SECTIONS:
        section = "analytics"
    if not any(w["id"] == wanted for w in view.workspaces):
        raise redirect("/")
    raise redirect(f"/w/{wanted}/{section}")


@page(workspace=False)
async def new_workspace(view: View) -> web.StreamResponse:
    if view.request.method == "POST":
        try:
            workspace = await view.op("create_workspace",
                                      body={"name": view.form.get("name", "").strip()})
        except ControlError as exc:
            return view.render("workspace_new.html", exc.status, error=exc.message,
                               values=view.form)
        raise redirect(f"/w/{workspace['id']}/apis?welcome=1")
    return view.render("workspace_new.html", values={})


NAV_SECTIONS = ("analytics", "apis", "policies", "keys", "alerts", "members", "audit")


# -- APIs ------------------------------------------------------------------------------

async def _policies(view: View) -> list[dict]:
    return (await view.op("list_policies"))["items"]


@page()
async def apis(view: View) -> web.StreamResponse:
    error, status = None, 200
    if view.request.method == "POST":
        try:
            await view.op("create_api", body=forms.api(view.form))
        except ControlError as exc:
            error, status = exc, exc.status
        else:
            raise redirect(view.url("apis") + "?done=api-created")
    items = (await view.op("list_apis"))["items"]
    policies = await _policies(view)
    return view.render("apis.html", status, apis=items, policies=policies,
                       policy_names={p["id"]: p["name"] for p in policies}, error=error,
                       values=view.form if error else {"strip_prefix": "on"},
                       welcome=view.request.query.get("welcome"))


@page()
async def api_detail(view: View) -> web.StreamResponse:
    error, status = None, 200
    if view.request.method == "POST":
        if view.form.get("action") == "delete":
            await view.op("delete_api")
            raise redirect(view.url("apis") + "?done=api-deleted")
        try:
            await view.op("update_api", body=forms.api(view.form))
        except ControlError as exc:
            error, status = exc, exc.status
        else:
            raise redirect(view.url("apis") + "?done=api-saved")
    api = await view.op("get_api")
    values = view.form if error else {
        **{k: ("" if v is None else v) for k, v in api.items()},
        "strip_prefix": "on" if api["strip_prefix"] else ""}
    return view.render("api_edit.html", status, api=api, policies=await _policies(view),
                       values=values, error=error)


# -- policies --------------------------------------------------------------------------

def _policy_choices() -> dict:
    return {"scopes": SCOPES, "modes": MODES, "algorithms": ALGORITHMS,
            "failure_modes": FAILURE_MODES}


def _policy_values(policy: dict) -> dict:
    return {**policy, "limits": ", ".join(policy["limits"])}


@page()
async def policies(view: View) -> web.StreamResponse:
    error, status = None, 200
    if view.request.method == "POST":
        try:
            await view.op("create_policy", body=forms.policy(view.form))
        except ControlError as exc:
            error, status = exc, exc.status
        else:
            raise redirect(view.url("policies") + "?done=policy-created")
    items = await _policies(view)
    apis_ = (await view.op("list_apis"))["items"]
    keys = (await view.op("list_keys"))["items"]
    used = {p["id"]: {"api_names": [a["name"] for a in apis_ if a["policy_id"] == p["id"]],
                      "key_count": sum(1 for k in keys if k["policy_id"] == p["id"]
                                  and k["status"] == "active")} for p in items}
    return view.render("policies.html", status, policies=items, used=used, error=error,
                       values=view.form if error else {"limits": "100/s, 5000/h"},
                       **_policy_choices())


@page()
async def policy_detail(view: View) -> web.StreamResponse:
    error, status = None, 200
    if view.request.method == "POST":
        try:
            if view.form.get("action") == "delete":
                await view.op("delete_policy")
                raise redirect(view.url("policies") + "?done=policy-deleted")
            await view.op("update_policy", body=forms.policy(view.form))
        except ControlError as exc:
            error, status = exc, exc.status
        else:
            raise redirect(view.url("policies") + "?done=policy-saved")
    policy = await view.op("get_policy")
    return view.render("policy_edit.html", status, policy=policy, error=error,
                       values=view.form if error else _policy_values(policy),
                       **_policy_choices())


# -- keys ------------------------------------------------------------------------------

@page()
async def keys(view: View) -> web.StreamResponse:
    error, status = None, 200
    if view.request.method == "POST":
        try:
            created = await view.op("create_key", body=forms.key(view.form))
        except ControlError as exc:
            error, status = exc, exc.status
        else:
            return view.render("key_reveal.html", key=created, secret=created["key"],
                               title="Key created")
    items = (await view.op("list_keys"))["items"]
    policies_ = await _policies(view)
    apis_ = (await view.op("list_apis"))["items"]
    return view.render("keys.html", status, keys=items, policies=policies_, apis=apis_,
                       policy_names={p["id"]: p["name"] for p in policies_}, error=error,
                       values=view.form if error else {}, now=datetime.now(timezone.utc))


@page()
async def key_revoke(view: View) -> web.StreamResponse:
    await view.op("revoke_key")
    raise redirect(view.url("keys") + "?done=key-revoked")


@page()
async def key_roll(view: View) -> web.StreamResponse:
    try:
        rolled = await view.op("roll_key", body=forms.roll(view.form))
    except ControlError as exc:
        return error_page(view.request, exc.status, "Cannot roll this key", exc.message, view)
    return view.render("key_reveal.html", key=rolled["key"], secret=rolled["key"]["key"],
                       previous=rolled["previous"], title="Key rolled")


# -- analytics -------------------------------------------------------------------------

def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


async def _analytics(view: View) -> dict:
    query = view.request.query
    chosen = query.get("range") if query.get("range") in RANGES else "1h"
    span, step = RANGES[chosen]
    api_id = query.get("api_id") or None
    now = time.time()
    start = now - span
    params = {"from": _iso(start), "to": _iso(now), "api_id": api_id}
    out = {"range": chosen, "api_id": api_id, "step": step, "ranges": list(RANGES),
           "refresh": query.get("refresh") if query.get("refresh") in REFRESH else "30s",
           "refresh_options": REFRESH,
           "updated_label": datetime.fromtimestamp(now, timezone.utc).strftime("%H:%M:%S UTC")}
    try:
        requests = await view.op("analytics_requests", query={**params, "step": step})
        latency = await view.op("analytics_latency", query={**params, "step": step})
        decisions = await view.op("analytics_decisions", query=params)
        top_keys = await view.op("analytics_top_keys", query={**params, "limit": 10})
        top_paths = await view.op("analytics_top_paths", query={**params, "limit": 10})
    except ControlError as exc:
        if exc.status != 503:
            raise
        return {**out, "unavailable": exc.message}

    first = int(start // step * step)
    last = int(now // step * step)
    counts = {int(b["ts"].timestamp()): b for b in requests["buckets"]}
    rps_rows, total_5xx = [], 0
    for ts in range(first, last + 1, step):
        bucket = counts.get(ts, {})
        seconds = max(min(step, now - ts), 1) if ts == last else step
        rps_rows.append((ts, {s.key: bucket.get(s.key, 0) / seconds for s in STATUS_SERIES}))
        total_5xx += bucket.get("5xx", 0)
    lat = {int(b["ts"].timestamp()): b for b in latency["buckets"]}
    lat_rows = [(ts, {s.key: lat.get(ts, {}).get(s.key) for s in LATENCY_SERIES})
                for ts in range(first, last + 1, step)]
    end = last + step
    total = decisions["total"]
    share = {k: (decisions[k] / total if total else 0.0) for k, _ in DECISIONS}
    empty = "No requests in this range"
    return {**out, "total": total, "rps": total / span, "share": share,
            "decisions": decisions, "latency": latency,
            "error_rate": total_5xx / total if total else 0.0,
            "rps_chart": charts.stacked_bars("Requests per second by status class", rps_rows,
                                             STATUS_SERIES, first, end, step, "req/s", empty),
            "latency_chart": charts.lines("Latency percentiles", lat_rows, LATENCY_SERIES,
                                          first, end, step, "ms", empty),
            "top_keys": top_keys["items"], "top_paths": top_paths["items"],
            "status_series": STATUS_SERIES, "latency_series": LATENCY_SERIES}


def _panel_url(view: View, data: dict) -> str:
    params = {"range": data["range"]}
    if data["api_id"]:
        params["api_id"] = data["api_id"]
    return view.url("analytics/panel") + "?" + urlencode(params)


@page()
async def analytics(view: View) -> web.StreamResponse:
    data = await _analytics(view)
    apis_ = (await view.op("list_apis"))["items"]
    return view.render("analytics.html", a=data, apis=apis_, panel_url=_panel_url(view, data),
                       DECISIONS=DECISIONS, fmt=charts.fmt)


@page()
async def analytics_panel(view: View) -> web.StreamResponse:
    data = await _analytics(view)
    return view.render("_analytics_panel.html", a=data, DECISIONS=DECISIONS, fmt=charts.fmt)


# -- members, audit --------------------------------------------------------------------

@page()
async def members(view: View) -> web.StreamResponse:
    error, status, invited = None, 200, None
    if view.request.method == "POST":
        try:
            invited = await view.op("create_invitation", body=forms.invitation(view.form))
        except ControlError as exc:
            error, status = exc, exc.status
    items = (await view.op("list_members"))["items"]
    invitations = []
    if view.can("list_invitations"):
        invitations = [i for i in (await view.op("list_invitations"))["items"]
                       if not i["accepted_at"] and not i["revoked_at"]]
    invite_url = None
    if invited:
        invite_url = (f"{view.request.scheme}://{view.request.host}/signup?invitation="
                      f"{quote(invited['token'])}")
    return view.render("members.html", status, members=items, invitations=invitations,
                       roles=ROLES, error=error, values=view.form if error else {},
                       invited=invited, invite_url=invite_url)


@page()
async def member_update(view: View) -> web.StreamResponse:
    try:
        if view.form.get("action") == "remove":
            await view.op("remove_member")
            if view.request.match_info["user_id"] == view.user["id"]:
                raise redirect("/")
            raise redirect(view.url("members") + "?done=member-removed")
        await view.op("update_member", body={"role": view.form.get("role", "")})
    except ControlError as exc:
        return error_page(view.request, exc.status, "Cannot change this member",
                          exc.message, view)
    raise redirect(view.url("members") + "?done=member-saved")


@page()
async def invitation_revoke(view: View) -> web.StreamResponse:
    await view.op("revoke_invitation")
    raise redirect(view.url("members") + "?done=invitation-withdrawn")


@page()
async def audit(view: View) -> web.StreamResponse:
    before = view.request.query.get("before")
    query = {"limit": 50}
    if before and before.isdigit():
        query["before"] = before
    items = (await view.op("list_audit", query=query))["items"]
    older = items[-1]["id"] if len(items) == 50 else None
    return view.render("audit.html", entries=items, older=older)


# -- alerts ----------------------------------------------------------------------------

ALERTS_API = ("list_alert_rules", "create_alert_rule", "list_alert_channels",
              "list_alert_history")


def alerts_ready() -> bool:
    return all(ops.available(name) for name in ALERTS_API)


@page()
async def alerts(view: View) -> web.StreamResponse:
    if not alerts_ready():
        return view.render("alerts.html", ready=False)
    error, status, secret = None, 200, None
    form_kind = view.form.get("form")
    if view.request.method == "POST":
        try:
            if form_kind == "channel":
                created = await view.op("create_alert_channel", body=forms.channel(view.form))
                secret = created.get("secret")
            else:
                await view.op("create_alert_rule", body=forms.rule(view.form))
        except ControlError as exc:
            error, status = exc, exc.status
        else:
            if not secret:
                raise redirect(view.url("alerts") + ("?done=rule-created"
                                                     if form_kind != "channel" else ""))
    rules = (await view.op("list_alert_rules"))["items"]
    channels = (await view.op("list_alert_channels"))["items"]
    history = (await view.op("list_alert_history", query={"limit": 20}))["items"]
    apis_ = (await view.op("list_apis"))["items"]
    from rateguard.alerts.rules import COMPARATORS, METRICS
    return view.render("alerts.html", status, ready=True, rules=rules, channels=channels,
                       history=history, apis=apis_, metrics=METRICS,
                       comparators=list(COMPARATORS), error=error, form_kind=form_kind,
                       values=view.form if error else {"window_seconds": "300",
                                                       "for_seconds": "0"},
                       secret=secret, rule_names={r["id"]: r["name"] for r in rules},
                       api_names={a["id"]: a["name"] for a in apis_})


@page()
async def alert_rule_delete(view: View) -> web.StreamResponse:
    await view.op("delete_alert_rule")
    raise redirect(view.url("alerts") + "?done=rule-deleted")


@page()
async def alert_channel_delete(view: View) -> web.StreamResponse:
    await view.op("delete_alert_channel")
    raise redirect(view.url("alerts") + "?done=channel-deleted")


def routes() -> list[web.RouteDef]:
    w = "/w/{workspace_id}"
    both = ("GET", "POST")
    table = [
        (("GET",), "/", home), (both, "/signin", signin), (both, "/signup", signup),
        (("POST",), "/signout", signout), (("GET",), "/switch", switch),
        (both, "/workspaces/new", new_workspace),
        (("GET",), w, workspace_home),
        (both, w + "/apis", apis), (both, w + "/apis/{api_id}", api_detail),
        (both, w + "/policies", policies), (both, w + "/policies/{policy_id}", policy_detail),
        (both, w + "/keys", keys), (("POST",), w + "/keys/{key_id}/revoke", key_revoke),
        (("POST",), w + "/keys/{key_id}/roll", key_roll),
        (("GET",), w + "/analytics", analytics),
        (("GET",), w + "/analytics/panel", analytics_panel),
        (both, w + "/members", members),
        (("POST",), w + "/members/{user_id}", member_update),
        (("POST",), w + "/invitations/{invitation_id}/revoke", invitation_revoke),
        (("GET",), w + "/audit", audit),
        (both, w + "/alerts", alerts),
        (("POST",), w + "/alerts/rules/{rule_id}/delete", alert_rule_delete),
        (("POST",), w + "/alerts/channels/{channel_id}/delete", alert_channel_delete),
    ]
    from rateguard.web.pages import account  # password, sessions, reset, users

    table += account.routes()
    return [web.route(method, path, handler) for methods, path, handler in table
            for method in methods]
