"""The dashboard's browser session and CSRF tokens.

A signed-in browser holds one cookie, ``rg_session``: a JWT (HS256, a key derived from
JWT_SECRET) naming the user and a row of the same ``sessions`` table the API's tokens
use. Its ``typ`` is ``web``, so the API never accepts it as a Bearer token, and every
request checks the session row, so signing out (or revoking the user's sessions) ends it
at once. The cookie is HttpOnly, SameSite=Lax and, in production, Secure.

CSRF: every form carries a token that is an HMAC of the session id (signed in) or of a
random pre-session cookie ``rg_csrf`` (sign-in and sign-up forms); a POST without the
right token is refused. A POST whose Origin header names another site is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import jwt
from aiohttp import web

SESSION_COOKIE = "rg_session"
ANON_COOKIE = "rg_csrf"
SESSION_TTL = 12 * 3600
ISSUER = "rateguard"


class WebSessions:
    def __init__(self, jwt_secret: str, secure: bool) -> None:
        self.key = hmac.new(jwt_secret.encode(), b"rateguard-web-session",
                            hashlib.sha256).digest()
        self.secure = secure

    # -- the session cookie -----------------------------------------------------------

    def issue(self, user_id: str, session_id: str) -> str:
        now = int(time.time())
        return jwt.encode({"sub": user_id, "sid": session_id, "typ": "web", "iss": ISSUER,
                           "iat": now, "exp": now + SESSION_TTL}, self.key, algorithm="HS256")

    def read(self, request: web.Request) -> tuple[str, str] | None:
        """(user id, session id) from a valid cookie, or None."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw or len(raw) > 2000:
            return None
        try:
            claims = jwt.decode(raw, self.key, algorithms=["HS256"], issuer=ISSUER,
                                options={"require": ["exp", "sub", "sid"]})
        except jwt.PyJWTError:
            return None
        if claims.get("typ") != "web" or not isinstance(claims.get("sub"), str) \
                or not isinstance(claims.get("sid"), str):
            return None
        return claims["sub"], claims["sid"]

    def _cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int,
                samesite: str) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                            secure=self.secure, samesite=samesite)

    def sign_in(self, response: web.StreamResponse, user_id: str, session_id: str) -> None:
        self._cookie(response, SESSION_COOKIE, self.issue(user_id, session_id), SESSION_TTL,
                     "Lax")

    def sign_out(self, response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path="/")

    # -- CSRF -------------------------------------------------------------------------

    def _mac(self, label: str) -> str:
        return hmac.new(self.key, label.encode(), hashlib.sha256).hexdigest()

    def csrf_for_session(self, session_id: str) -> str:
        return self._mac("csrf|session|" + session_id)

    def anon_token(self, request: web.Request) -> tuple[str, str | None]:
        """(CSRF token, new cookie value or None) for a visitor who is not signed in."""
        value = request.cookies.get(ANON_COOKIE)
        fresh = None
        if not value or len(value) > 100:
            value = fresh = secrets.token_urlsafe(24)
        return self._mac("csrf|anon|" + value), fresh

    def set_anon(self, response: web.StreamResponse, value: str) -> None:
        self._cookie(response, ANON_COOKIE, value, 86400, "Strict")

    def check(self, expected: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(expected, given)


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from another origin."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("X-Forwarded-Host") or request.host
    return origin.split("://", 1)[-1].rstrip("/") == host
