"""``next`` after sign-in: only a path on this origin, after the browser's normalisation."""

import pytest

from rateguard.web.redirects import safe_next


@pytest.mark.parametrize("value", [
    "/", "/w/ws_1/apis", "/w/ws_1/apis?welcome=1&x=%2F", "/a/b#frag", "/search?q=a%20b",
    "/a//b", "/a/%2F/b",
])
def test_same_origin_paths_are_kept(value):
    assert safe_next(value) == value


@pytest.mark.parametrize("value", [
    None, "", 5, "x" * 3000,
    "//evil.example/x", "///evil.example", "/\\evil.example", "\\\\evil.example",
    "\\/evil.example", "/\t/evil.example/path", "/%09/evil.example/path",
    "/\n/evil.example", "/%0a/evil.example", "/\r\n/evil.example", "/%0d%0a/evil.example",
    " //evil.example", "//evil.example ", "\t//evil.example", "/ /evil.example",
    "/%2f/evil.example", "/%2F%2Fevil.example", "%2F%2Fevil.example", "/%5cevil.example",
    "/%5Cevil.example", "/%255c%255cevil.example", "/%25252f%25252fevil.example",
    "https://evil.example/", "http:/evil.example", "javascript:alert(1)",
    "evil.example", "relative/path", "/\x00/evil.example", "/\u2028/evil.example",
    "/\u00a0/evil.example", "/\x7f/evil.example", "/%00/x",
])
def test_anything_a_browser_could_read_as_another_origin_is_refused(value):
    assert safe_next(value) == "/"
    assert safe_next(value, "/home") == "/home"
