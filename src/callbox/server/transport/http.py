"""The HTTP answers of the transport's port: every request head gets a status (RFC 9110).

The port serves one WebSocket endpoint and a few read-only resources (`HttpHandler`), so the
only methods are GET and HEAD: HEAD is answered as GET is, without the body (RFC 9110 §9.3.2),
and any other method gets 405 with `Allow` (§15.5.6) on every path. A plain GET of the
WebSocket path gets websockets' 426 with `Upgrade: websocket` (RFC 6455 §4.2.2), and an upgrade
whose `Origin` the transport does not accept its 403 (`TransportConfig.origins`). What the
websockets parser cannot read gets 400 (`bad_request`), a head over the transport's bound 431.

A resource whose 200 carries an `ETag` is answered 304 when the request's `If-None-Match` names
it (RFC 9110 §13.1.2), for every handler alike.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from http import HTTPStatus
from typing import TypeAlias

from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

__all__ = ["ALLOW", "HttpHandler", "HttpResponse", "bad_request", "refusal", "respond"]

HttpResponse: TypeAlias = tuple[int, list[tuple[str, str]], bytes]
HttpHandler: TypeAlias = Callable[[str, Headers], HttpResponse | None]
"""Maps a path (no query) and the request's header fields to (status, headers, body), or None
for 404; called for GET and HEAD."""

ALLOW = "GET, HEAD"
_OURS = {"date", "connection", "content-length"}
"""Header fields the transport sets itself, whatever a handler says."""


def respond(
    protocol: ServerProtocol, request: Request, ws_path: str, handler: HttpHandler | None
) -> Response:
    """The response to a parsed request head: the WebSocket handshake's on `ws_path` (101 when
    it upgrades), else a resource, or an error status."""
    path = request.path.partition("?")[0]
    method = request.method
    if method not in ("GET", "HEAD"):
        response = refusal(HTTPStatus.METHOD_NOT_ALLOWED)
        response.headers["Allow"] = ALLOW
        return response
    if path == ws_path:
        # HEAD cannot upgrade (RFC 6455 §4.1): it gets what a GET without the upgrade gets.
        response = protocol.accept(request if method == "GET" else Request(path, Headers()))
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            return response
    else:
        response = _resource(path, request.headers, handler)
    if method == "HEAD":  # Content-Length stays: the size the GET's body would have
        response.body = b""
    return response


def _resource(path: str, request_headers: Headers, handler: HttpHandler | None) -> Response:
    result = handler(path, request_headers) if handler else None
    if result is None:
        return refusal(HTTPStatus.NOT_FOUND)
    status, headers, body = result
    if status == HTTPStatus.OK and _not_modified(request_headers, headers):
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
    A 304 has no `Content-Length`: it could only be the 200's (RFC 9110 §8.6)."""
    fields = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close")])
    fields.update((name, value) for name, value in headers if name.lower() not in _OURS)
    if status != HTTPStatus.NOT_MODIFIED:
        fields["Content-Length"] = str(len(body))
    return Response(status.value, status.phrase, fields, body)
