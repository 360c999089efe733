"""Requests to a server's admin API (`DELETE /api/v1/...`), for the cases that need the
deployer's hand: one HTTP/1.1 request on the port of the WebSocket URL, its status read."""

from __future__ import annotations

import ssl
from typing import Final
from urllib.parse import quote, urlsplit

import trio

ADMIN_TIMEOUT_S: Final = 10.0
MAX_RESPONSE_BYTES: Final = 1 << 20


async def admin_request(url: str, method: str, path: str, token: str) -> int:
    """The status of `method` `path` on the server of WebSocket `url` (`wss://`: over TLS),
    with `token` as the bearer token. Each segment of `path` must already be percent-encoded
    (`segment` does it)."""
    parts = urlsplit(url)
    host, secure = parts.hostname or "localhost", parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    with trio.fail_after(ADMIN_TIMEOUT_S):
        stream: trio.abc.Stream
        if secure:
            context = ssl.create_default_context()
            stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context)
        else:
            stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(head.encode())
            response = b""  # read to the end: the server closes after its answer
            while len(response) < MAX_RESPONSE_BYTES and (chunk := await stream.receive_some()):
                response += chunk
    status_line = response.partition(b"\r\n")[0].decode(errors="replace")
    try:
        return int(status_line.split()[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"not an HTTP response: {status_line!r}") from None


def segment(value: str) -> str:
    """`value` as one segment of a URL path."""
    return quote(value, safe="")
