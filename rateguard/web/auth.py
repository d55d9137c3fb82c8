"""Access tokens: short-lived JWTs (HS256, JWT_SECRET) naming a user and a session.

A token is only as good as its session: every request also checks that the session
row is not revoked, so logout (or revoking a user's sessions) takes effect at once,
not when the token expires. Refresh tokens are opaque, stored hashed, and rotated on
every use (repository.refresh_session).
"""

from __future__ import annotations

import time

import jwt

from rateguard.db.errors import Unauthorized

ACCESS_TTL_SECONDS = 15 * 60
ISSUER = "rateguard"


class Tokens:
    def __init__(self, secret: str, ttl: int = ACCESS_TTL_SECONDS) -> None:
        self.secret = secret
        self.ttl = ttl

    def issue(self, user_id: str, session_id: str) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "sid": session_id, "typ": "access", "iss": ISSUER,
                  "iat": now, "exp": now + self.ttl}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str) -> tuple[str, str]:
        """(user id, session id) of a valid access token; Unauthorized otherwise."""
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"], issuer=ISSUER,
                                options={"require": ["exp", "iat", "sub", "sid"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("access token expired; refresh it") from None
        except jwt.PyJWTError:
            raise Unauthorized("access token is not valid") from None
        if claims.get("typ") != "access" or not isinstance(claims.get("sub"), str) \
                or not isinstance(claims.get("sid"), str):
            raise Unauthorized("access token is not valid")
        return claims["sub"], claims["sid"]


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
