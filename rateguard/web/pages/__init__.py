"""The dashboard: server-rendered pages on the same port as the management API.

``setup_pages(app)`` mounts the pages (views.py), the static files (web/static: CSS, one
small script, no CDN) and the security headers every page and asset carries: a strict
Content-Security-Policy (no inline script or style), no framing, no sniffing.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from aiohttp import web

from rateguard.web.pages import charts
from rateguard.web.pages.session import WebSessions
from rateguard.web.pages.views import JINJA, SESSIONS, routes

WEB = Path(__file__).resolve().parent.parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
           "Cross-Origin-Opener-Policy": "same-origin"}


def _filters(env: jinja2.Environment) -> None:
    from rateguard.web.pages import formatting

    env.filters.update(dt=formatting.dt, ago=formatting.ago, num=formatting.num,
                       pct=formatting.pct, ms=formatting.ms, compact=formatting.compact)
    env.globals.update(fmt=charts.fmt)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not request.path.startswith("/api/"):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)


def setup_pages(app: web.Application, jwt_secret: str, *, secure_cookies: bool) -> None:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(WEB / "templates")),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    _filters(env)
    app[JINJA] = env
    app[SESSIONS] = WebSessions(jwt_secret, secure_cookies)
    app.router.add_routes(routes())
    static = app.router.add_static("/static/", WEB / "static", name="static",
                                   append_version=True)
    env.globals["static"] = lambda filename: str(static.url_for(filename=filename))
    app.on_response_prepare.append(_security_headers)
