"""Checks on a request head that need no socket. Pure, unit-tested on their own
(tests/unit/test_request_head.py).

Each function runs off the hot path: the HTTP layer calls it only when a head is
unusual (no Host, an HTTP version other than 1.1, a client X-Request-Id), or caches its
answer (Host values).
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from urllib.parse import unquote_to_bytes

# RFC 9110 7.2 / RFC 3986 3.2.2: Host = uri-host [ ":" port ]; a reg-name is unreserved,
# pct-encoded and sub-delims characters; an IP-literal is bracketed. No "/", "@", space,
# "\" or control character can appear in a valid one.
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~-]+)?\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
# A client's X-Request-Id is kept when it looks like an id (UUIDs, hex, base64, ULIDs):
# 1-128 characters, nothing that could break a log line, a header or a JSON string.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._~:+/=@-]{1,128}")
# RFC 9110 5.6.2: method = token.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# Overlong UTF-8 (C0/C1 leads, E0 80-9F, F0 80-8F): never valid UTF-8, and "." or "/"
# to a lax decoder (%c0%ae%c0%ae is ".."), so never a path worth serving.
_OVERLONG = re.compile(rb"[\xc0\xc1]|\xe0[\x80-\x9f]|\xf0[\x80-\x8f]")

# Methods refused before routing (RFC 9110 9.3.8: TRACE reflects the request, cookies and
# credentials included, so a gateway does not pass it on; CONNECT makes a tunnel).
REFUSED_METHODS = frozenset({b"TRACE", b"CONNECT"})
ALLOW_LINE = b"allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"


def valid_host(value: bytes) -> bool:
    """The Host field value is a uri-host with an optional port (empty is allowed: RFC
    9112 3.2 for a target without authority)."""
    return _HOST.fullmatch(value.strip(b" \t")) is not None


def valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def valid_method(value: bytes) -> bool:
    return _TOKEN.fullmatch(value) is not None


def overlong_utf8(path: str) -> bool:
    """Whether ``path`` (latin-1 text of the raw target) holds overlong UTF-8, also
    percent-encoded up to four times (as routing.safe_path decodes)."""
    data = path.encode("latin-1")
    for _ in range(4):
        if _OVERLONG.search(data):
            return True
        if b"%" not in data:
            return False
        data = unquote_to_bytes(data)
    return _OVERLONG.search(data) is not None


def websocket_upgrade(method: bytes, headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The ``Upgrade`` value to forward when the head is a WebSocket handshake (RFC
    6455 4.1: GET, ``Upgrade: websocket``, ``Connection: upgrade``), else None."""
    if method != b"GET":
        return None
    upgrade = connection = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade = upgrade or b"websocket" in value.lower()
        elif name == b"connection":
            connection = connection or b"upgrade" in value.lower()
    return b"websocket" if upgrade and connection else None


def version_refusal(version: str) -> tuple[int, str] | None:
    """``(status, message)`` for an HTTP version the proxy does not serve, else None.
    A request line without a version (HTTP/0.9) is malformed for HTTP/1.1 (RFC 9112
    3: request-line = method SP request-target SP HTTP-version): 400. A major version
    other than 1 gets 505 (RFC 9110 15.6.6)."""
    if version in ("1.1", "1.0"):
        return None
    if version == "0.9":
        return 400, "request line without an HTTP version"
    return 505, f"HTTP/{version} is not supported; use HTTP/1.1"


class DateLine:
    """The ``date: ...\\r\\n`` line every response carries (RFC 9110 6.6.1), formatted
    once per second, not per response. ``refresh`` is called by the server's periodic
    sweep (every 0.1 s); ``line`` is read by every response the proxy makes, ``line_via``
    (the same with ``via: 1.1 rateguard``, RFC 9110 7.6.3) by every one it relays."""

    __slots__ = ("line", "line_via", "_second", "_clock")

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._second = -1
        self.line = self.line_via = b""
        self.refresh()

    def refresh(self) -> bytes:
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._second = second
            self.line = b"date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
            self.line_via = self.line + b"via: 1.1 rateguard\r\n"
        return self.line
