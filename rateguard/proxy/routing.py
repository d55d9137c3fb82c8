"""Route a request to an API by host and longest path prefix. Pure."""

from __future__ import annotations

from urllib.parse import unquote

from rateguard.snapshot.model import Api


def safe_path(path: str) -> bool:
    """False for paths that could climb out of an API's prefix once an upstream
    decodes them: ``.``/``..`` segments, also percent-encoded (any number of times),
    behind encoded slashes and backslashes or followed by ``;params`` (``..;/``, which
    some servers read as ``..``), and NUL bytes. Origin-form only: ``*``, absolute
    URLs and ``host:port`` targets are refused."""
    if not path.startswith("/"):
        return False
    if "%" not in path and "\\" not in path and "/." not in path and "\x00" not in path:
        return True  # no dot segment can hide in it: the common case, checked cheaply
    decoded = path
    for _ in range(4):  # upstreams that decode more than four times are not served
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        if "%" in decoded:
            return False
    decoded = decoded.replace("\\", "/")
    if "\x00" in decoded:
        return False
    for segment in decoded.split("/"):
        if segment.split(";", 1)[0].strip() in (".", ".."):
            return False
    return True


def collapse_slashes(path: str) -> str:
    """``//`` runs become one ``/`` (as nginx's merge_slashes): ``//evil.example/x``
    never reaches an upstream, where it could read as a scheme-relative URL."""
    while "//" in path:
        path = path.replace("//", "/")
    return path


def match(routes: dict, host: str, path: str) -> tuple[Api, str] | None:
    """The API serving ``host`` + ``path`` and the path to send upstream (with the
    API's prefix stripped if it asks for it and the upstream's base path added).
    ``path`` excludes the query string; ``host`` is lowercase without a port.
    Repeated slashes are collapsed first (see :func:`collapse_slashes`).
    A host table holding the key ``""`` is closed (a host owned by one workspace): a
    path it does not route is not looked up among the any-host routes."""
    if "//" in path:
        path = collapse_slashes(path)
    for table in (routes.get(host), routes.get("")):
        if not table:
            continue
        candidate = path
        while True:  # "/a/b/c", "/a/b", "/a", "/": the longest configured prefix wins
            api = table.get(candidate)
            if api is not None:
                if candidate == "/" or not api.strip_prefix:
                    rest = path
                else:
                    rest = path[len(candidate):] or "/"
                return api, api.upstream.base_path + rest
            if candidate == "/":
                break
            cut = candidate.rfind("/")
            candidate = candidate[:cut] or "/"
        if "" in table:
            return None
    return None


def host_of(value: bytes | None) -> str:
    """``Host`` header -> lowercase host without port (IPv6 brackets kept)."""
    if not value:
        return ""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rsplit(":", 1)[0] if ":" in host else host
