"""The web app's HTTP server: aiohttp's, except for requests its parser refuses.

A request head aiohttp cannot parse (a header over 8190 bytes, a NUL or other control
character in a header, a malformed request line) never reaches the application or its
middleware: aiohttp answers it itself with a text/plain 400 and logs an ERROR with a
traceback. :class:`JsonErrorsRunner` answers those in the API's JSON error shape
(``{"error": "bad_request", "message": ...}``) and logs one WARNING line without a
traceback, naming the client and the kind of error (never the offending bytes).
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

log = logging.getLogger("rateguard.web")


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, LineTooLong):
        return ("request head: the request line or a header is too long (at most 8190 "
                "bytes each)")
    return "request head: not a valid HTTP/1.1 request (a control character in a header, " \
           "a malformed header or request line)"


class _JsonErrorsHandler(RequestHandler):
    __slots__ = ()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, BadHttpMethod) and self._request_count == 1:
            log.debug("web: not an HTTP request from %s", request.remote)
        else:
            log.warning("web: refused a malformed request from %s (%d, %s)", request.remote,
                        status, type(exc).__name__ if exc else "bad request")
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send the error")
        response = web.Response(status=status, content_type="application/json", body=orjson.dumps(
            {"error": "bad_request", "message": _describe(exc)}))
        response.force_close()
        return response


class _JsonErrorsServer(Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorsRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unparseable requests in JSON."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorsServer  # same state; only the protocol factory differs
        return server
