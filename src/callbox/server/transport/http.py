"""The HTTP answers of the transport's port: every request head gets a status (RFC 9110).

The port serves one WebSocket endpoint, and whatever the application's `HttpHandler` answers:
read-only resources (GET and HEAD), and the admin API (GET and DELETE, `server/admin.py`). A
request has no body (websockets' parser refuses one: 400), so every answer fits in the head's
read. HEAD is answered as GET is, without the body (RFC 9110 §9.3.2). A method the handler does
not take on a path it does not know gets 405 with `Allow: GET, HEAD` (§15.5.6), as any method
but GET and HEAD does on the WebSocket path; a handler that knows a path answers its own 405
with that path's `Allow`. A plain GET of the WebSocket path gets websockets' 426 with
`Upgrade: websocket` (RFC 6455 §4.2.2), and an upgrade whose `Origin` the transport does not
accept its 403 (`TransportConfig.origins`). What the websockets parser cannot read gets 400
(`bad_request`), a head over the transport's bound 431.

The handler is async: an answer may have to wait (in a cluster, a DELETE is an event committed
to the shared store). It runs in the connection's task, within the handshake's slot and
timeout, so what it awaits is bounded like the head's reading; the upgrade of the WebSocket
path never reaches it.

A resource whose 200 carries an `ETag` is answered 304 when the request's `If-None-Match` names
it (RFC 9110 §13.1.2), for every handler alike.
"""

from __future__ import annotations

import email.utils
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TypeAlias
from urllib.parse import parse_qs

from attrs import frozen
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

__all__ = [
    "ALLOW",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "bad_request",
    "refusal",
    "respond",
]


@frozen
class HttpRequest:
    """A request head, as a handler sees it (it has no body)."""

    method: str
    path: str
    """Without the query, still percent-encoded."""
    query: str
    """What follows the `?` (empty: none)."""
    headers: Headers
    client: str
    """The client's address (behind a trusted proxy, the one its `X-Forwarded-For` names)."""

    def query_values(self, name: str) -> list[str]:
        """The values of the query parameter `name`, decoded, in order (none: empty)."""
        return parse_qs(self.query, keep_blank_values=True).get(name, [])

    def query_names(self) -> list[str]:
        """The names of the query's parameters, decoded, each once."""
        return list(parse_qs(self.query, keep_blank_values=True))


HttpResponse: TypeAlias = tuple[int, list[tuple[str, str]], bytes]
HttpHandler: TypeAlias = Callable[[HttpRequest], Awaitable[HttpResponse | None]]
"""Answers a request with (status, headers, body), or None for a path it does not serve (404
for GET and HEAD, else 405); called for every path but the WebSocket one, with any method."""

ALLOW = "GET, HEAD"
_OURS = {"date", "connection", "content-length"}
"""Header fields the transport sets itself, whatever a handler says."""


async def respond(
    protocol: ServerProtocol,
    request: Request,
    ws_path: str,
    handler: HttpHandler | None,
    client: str,
) -> Response:
    """The response to a parsed request head: the WebSocket handshake's on `ws_path` (101 when
    it upgrades), else the handler's, or an error status."""
    path, _, query = request.path.partition("?")
    method = request.method
    if path == ws_path:
        if method not in ("GET", "HEAD"):
            return _not_allowed()
        # HEAD cannot upgrade (RFC 6455 §4.1): it gets what a GET without the upgrade gets.
        response = protocol.accept(request if method == "GET" else Request(path, Headers()))
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            return response
    else:
        http_request = HttpRequest(method, path, query, request.headers, client)
        response = await _resource(http_request, handler)
    if method == "HEAD":  # Content-Length stays: the size the GET's body would have
        response.body = b""
    return response


def _not_allowed() -> Response:
    response = refusal(HTTPStatus.METHOD_NOT_ALLOWED)
    response.headers["Allow"] = ALLOW
    return response


async def _resource(request: HttpRequest, handler: HttpHandler | None) -> Response:
    result = None if handler is None else await handler(request)
    if result is None:
        if request.method in ("GET", "HEAD"):
            return refusal(HTTPStatus.NOT_FOUND)
        return _not_allowed()
    status, headers, body = result
    if status == HTTPStatus.OK and _not_modified(request.headers, headers):
        # What a cache needs to update its copy (§15.4.5), without the content's own fields.
        kept = [(name, value) for name, value in headers if name.lower() != "content-type"]
        return _response(HTTPStatus.NOT_MODIFIED, kept, b"")
    return _response(HTTPStatus(status), headers, body)


def _not_modified(request_headers: Headers, headers: list[tuple[str, str]]) -> bool:
    """Whether `If-None-Match` names the response's `ETag` (weak comparison, or `*`)."""
    etag = next((value for name, value in headers if name.lower() == "etag"), None)
    if etag is None:
        return False
    wanted = {
        tag.strip().removeprefix("W/")
        for field in request_headers.get_all("If-None-Match")
        for tag in field.split(",")
    }
    return "*" in wanted or etag.removeprefix("W/") in wanted


def refusal(status: HTTPStatus) -> Response:
    """A plain-text error response; its body is the status phrase."""
    return _response(
        status, [("Content-Type", "text/plain; charset=utf-8")], f"{status.phrase}\n".encode()
    )


def bad_request() -> bytes:
    """The 400 for a head the parser refused: websockets then only half-closes, and its
    protocol takes no response any more, so this one is sent as bytes."""
    return refusal(HTTPStatus.BAD_REQUEST).serialize()


def _response(status: HTTPStatus, headers: list[tuple[str, str]], body: bytes) -> Response:
    """Every response but the 101 closes the connection: the server reads one request head.
    A 304 has no `Content-Length`: it could only be the 200's; nor has a 204 (RFC 9110 §8.6)."""
    fields = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close")])
    fields.update((name, value) for name, value in headers if name.lower() not in _OURS)
    if status not in (HTTPStatus.NOT_MODIFIED, HTTPStatus.NO_CONTENT):
        fields["Content-Length"] = str(len(body))
    return Response(status.value, status.phrase, fields, body)
