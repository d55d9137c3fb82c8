"""Header work for both directions. Pure: bytes in, bytes out.

Hop-by-hop headers (RFC 9110 section 7.6.1) are dropped, along with every header the
``Connection`` header names. Header names are compared lowercase.
"""

from __future__ import annotations

import orjson

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})

# Request headers the proxy sets itself or consumes.
_REQUEST_OWN = frozenset({
    b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"x-request-id", b"x-api-key",
})
# Response headers the proxy sets itself.
_RESPONSE_OWN = frozenset({
    b"content-length", b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset",
    b"ratelimit-policy", b"x-request-id", b"date",
})

REASONS = {
    200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    411: b"Length Required", 413: b"Content Too Large", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lowercase tokens of every ``Connection`` header (the headers they name are hop-by-hop)."""
    tokens = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def forwarding_hop(client_ip: bytes, proto: bytes) -> bytes:
    """What this hop adds to a forwarded request, one bytes object per connection (and
    proto), ready to follow ``x-forwarded-for: <earlier hops>, ``: the peer address,
    ``X-Forwarded-Proto``, ``Via: 1.1 rateguard`` (RFC 9110 7.6.3) and this hop's RFC
    7239 ``Forwarded`` element (its ``host=`` parameter follows per request)."""
    node = b'"[%s]"' % client_ip if b":" in client_ip else client_ip  # RFC 7239 6
    return (client_ip + b"\r\nx-forwarded-proto: " + proto + b"\r\nvia: 1.1 rateguard"
            b"\r\nforwarded: for=" + node + b";proto=" + proto)


def upstream_request_head(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], *, host: bytes,
    original_host: bytes | None, request_id: bytes, framing: bytes, drop: frozenset[bytes],
    extra: tuple[tuple[bytes, bytes], ...] = (), hop: bytes | None = None,
    client_ip: bytes = b"", proto: bytes = b"http",
) -> bytes:
    """The request line and headers sent upstream. ``headers`` have lowercase names;
    ``framing`` is b"content-length: N\\r\\n", b"transfer-encoding: chunked\\r\\n" or b"";
    ``drop`` holds extra lowercase names to remove (Connection tokens, the API key, and
    ``forwarded`` unless the peer is a trusted proxy); ``hop`` is
    :func:`forwarding_hop` (made from ``client_ip`` and ``proto`` when not given).

    ``X-Forwarded-For``: the client's lines, combined in order, then the peer address.
    ``Forwarded``: the client's lines (when not dropped), then this hop's element, with
    ``host=`` the request's Host. ``Via: 1.1 rateguard`` follows any the client sent.
    X-Forwarded-Proto/-Host and X-Request-Id are the proxy's own."""
    prior_for = None
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    for name, value in headers:
        if name in HOP_BY_HOP or name in _REQUEST_OWN or name in drop:
            if name == b"x-forwarded-for":
                prior_for = value if prior_for is None else prior_for + b", " + value
            continue
        parts += (name, b": ", value, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if hop is None:
        hop = forwarding_hop(client_ip, proto)
    if prior_for is None:
        parts += (b"x-request-id: ", request_id, b"\r\nx-forwarded-for: ", hop)
    else:
        parts += (b"x-request-id: ", request_id, b"\r\nx-forwarded-for: ", prior_for, b", ",
                  hop)
    if original_host:
        parts += (b';host="', original_host, b'"\r\nx-forwarded-host: ', original_host,
                  b"\r\n", framing, b"\r\n")
    else:
        parts += (b"\r\n", framing, b"\r\n")
    return b"".join(parts)


def client_response_head(
    status: int, reason: bytes, headers: list[tuple[bytes, bytes]], *, extra: list[bytes],
    framing: bytes, keep_alive: bool, http10: bool,
) -> bytes:
    """The status line and headers sent to the client. ``extra`` holds ready
    ``name: value\\r\\n`` lines (RateLimit-*, X-Request-Id)."""
    drop = connection_tokens(headers)
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b""))]
    for name, value in headers:
        if name in HOP_BY_HOP or name in _RESPONSE_OWN or name in drop:
            continue
        parts += (name, b": ", value, b"\r\n")
    parts += extra
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    elif http10:
        parts.append(b"connection: keep-alive\r\n")
    parts += (framing, b"\r\n")
    return b"".join(parts)


def ratelimit_lines(decision, policy_header: bytes) -> list[bytes]:
    """``RateLimit-*`` header lines for a decision, plus ``Retry-After`` when rejected."""
    lines = [b"ratelimit-limit: %d\r\nratelimit-remaining: %d\r\nratelimit-reset: %d\r\n"
             b"ratelimit-policy: %s\r\n" % (decision.limit.count, decision.remaining,
                                              decision.reset_seconds, policy_header)]
    if not decision.allowed:
        lines.append(b"retry-after: %d\r\n" % decision.retry_after_seconds)
    return lines


def json_response(status: int, error: str, message: str, *, extra: list[bytes] = (),
                  keep_alive: bool = True, head_only: bool = False, **fields) -> bytes:
    """A complete JSON error response: ``{"error": ..., "message": ..., ...}``."""
    body = orjson.dumps({"error": error, "message": message, **fields})
    parts = [b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
             % (status, REASONS.get(status, b""), len(body))]
    parts += extra
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)
