"""A small protocol client for the integration tests, on trio-websocket.

It checks what the outline promises of every server message as it reads it: valid against
`schemas/`, and session messages numbered 1, 2, 3… without a gap.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from callbox.codec import decode_server

Wire = dict[str, Any]
CONNECTION_MESSAGES = {"welcome", "pong"}


class Client:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.last_seq = 0
        self.welcome: Wire = {}

    async def send(self, message: Wire) -> None:
        await self.ws.send_message(orjson.dumps(message).decode())

    async def receive(self) -> Wire:
        raw = await self.ws.get_message()
        assert isinstance(raw, str), "the server sends text frames only"
        decode_server(raw.encode())  # raises unless valid against schemas/
        message: Wire = orjson.loads(raw)
        if message["type"] not in CONNECTION_MESSAGES and not (
            message["type"] == "error" and "seq" not in message and not self.welcome
        ):
            assert message["seq"] == self.last_seq + 1, (self.last_seq, message)
            self.last_seq = message["seq"]
        return message

    async def expect(self, type_: str, **fields: Any) -> Wire:
        message = await self.receive()
        assert message["type"] == type_, message
        for name, value in fields.items():
            assert message.get(name) == value, (name, message)
        return message

    async def hello(self, user_id: str, **extra: Any) -> Wire:
        await self.send({"type": "hello", "user_id": user_id, **extra})
        self.welcome = await self.expect("welcome")
        return self.welcome


@asynccontextmanager
async def connect(
    url: str,
    user_id: str | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    **hello: Any,
) -> AsyncIterator[Client]:
    """A client on `url` (`wss://` URLs with `ssl_context`), signed in as `user_id` if given;
    `extra_headers` go in the upgrade request (an `Origin`, as a browser sends)."""
    async with open_websocket_url(url, ssl_context=ssl_context, extra_headers=extra_headers) as ws:
        client = Client(ws)
        if user_id is not None:
            await client.hello(user_id, **hello)
        yield client


def server_url(listeners: list[trio.SocketListener]) -> str:
    host, port = listeners[0].socket.getsockname()[:2]
    return f"ws://{host}:{port}/ws"
