"""Fast checks of the dashboard's pieces that need no browser: the session cookie in
production, CSRF tokens, and the SVG charts' axes, units and gaps."""

from __future__ import annotations

import pytest
from aiohttp import web

from rateguard.db.errors import Unauthorized
from rateguard.web.auth import Tokens
from rateguard.web.pages import charts
from rateguard.web.pages.session import SESSION_COOKIE, WebSessions

SECRET = "unit-test-secret-" + "y" * 32


def test_production_cookie_is_secure_httponly_lax_and_not_an_api_token():
    sessions = WebSessions(SECRET, secure=True)
    response = web.Response()
    sessions.sign_in(response, "usr_1", "ses_1")
    morsel = response.cookies[SESSION_COOKIE]
    assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Lax"
    with pytest.raises(Unauthorized):
        Tokens(SECRET).verify(morsel.value)


def test_csrf_tokens_differ_per_session_and_check_in_constant_time():
    sessions = WebSessions(SECRET, secure=False)
    one, two = sessions.csrf_for_session("ses_1"), sessions.csrf_for_session("ses_2")
    assert one != two
    assert sessions.check(one, one) and not sessions.check(one, two)
    assert not sessions.check(one, None) and not sessions.check(one, "")


def test_nice_ticks_cover_the_top_with_round_steps():
    assert charts.nice_ticks(0.43) == [0, 0.2, 0.4, 0.6]
    assert charts.nice_ticks(950)[-1] >= 950
    assert charts.nice_ticks(0) == [0, 1]


def test_stacked_bars_have_axes_units_tooltips_and_both_sizes():
    rows = [(600, {"2xx": 2.0, "5xx": 0.5}), (660, {}), (720, {"4xx": 1.0})]
    svg = str(charts.stacked_bars("rps", rows, [charts.Series("2xx", "2xx"),
                                                charts.Series("4xx", "4xx"),
                                                charts.Series("5xx", "5xx")],
                                  600, 780, 60, "req/s", "none"))
    assert svg.count("<svg") == 2 and "chart-wide" in svg and "chart-narrow" in svg
    assert ">req/s</text>" in svg and ">time (UTC)</text>" in svg and ">00:10</text>" in svg
    assert svg.count('class="s-5xx"') == 2 and "5xx: 0.5 req/s" in svg


def test_lines_leave_gaps_and_say_when_empty():
    series = [charts.Series("p95", "p95")]
    rows = [(0, {"p95": 3.0}), (60, {"p95": 4.0}), (120, {"p95": None}), (180, {"p95": 5.0})]
    svg = str(charts.lines("latency", rows, series, 0, 240, 60, "ms", "no data"))
    assert svg.count("<polyline") == 2  # one run of two points per size; 180 stands alone
    assert svg.count('<circle class="dot s-p95"') == 6
    empty = str(charts.lines("latency", [(0, {"p95": None})], series, 0, 60, 60, "ms",
                             "no data"))
    assert ">no data</text>" in empty
