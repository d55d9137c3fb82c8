"""Where a page may send the browser after sign-in: ``next`` is kept only if it is a path
on this origin after everything a browser would do to it.

A browser reading ``Location`` (and the WHATWG URL parser behind it) drops tabs and
newlines anywhere and leading/trailing spaces and controls, and reads ``\\`` as ``/`` in
http(s) URLs: ``/\\t/evil.example`` and ``/\\evil.example`` both become
``//evil.example``, another origin. Some servers and proxies on the way decode
percent-escapes. So the value must carry no control or whitespace character at all and
start with exactly one ``/`` once backslashes are read as slashes, and so must each of
its percent-decoded forms once tabs and newlines are dropped (``/%09/evil.example``).
Anything else is refused, never repaired.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

MAX_LENGTH = 2000


def _starts_same_origin(value: str) -> bool:
    slashed = value.replace("\\", "/")
    if not slashed.startswith("/") or slashed.startswith("//"):
        return False
    parts = urlsplit(slashed)
    return not parts.scheme and not parts.netloc


def _clean(value: str) -> bool:
    """The value as sent: no control or whitespace character anywhere."""
    return not any(c.isspace() or ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in value)


def _decoded_ok(value: str) -> bool:
    """A percent-decoded form, normalised as a browser would read it: no controls but
    tabs and newlines, which are dropped; leading and trailing spaces dropped."""
    if any((ord(c) < 0x20 and c not in "\t\n\r") or 0x7f <= ord(c) <= 0x9f for c in value):
        return False
    for c in "\t\n\r":
        value = value.replace(c, "")
    return _starts_same_origin(value.strip(" "))


def safe_next(raw: object, default: str = "/") -> str:
    """``raw`` if it is a same-origin path (see the module's text), else ``default``."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_LENGTH:
        return default
    if not _clean(raw) or not _starts_same_origin(raw):
        return default
    form = raw
    for _ in range(4):  # up to four rounds of percent-decoding
        decoded = unquote(form)
        if decoded == form:
            return raw
        if not _decoded_ok(decoded):
            return default
        form = decoded
    return default  # still encoded after four rounds: not a path anyone needs
