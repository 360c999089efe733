"""A real webhook receiver for the tests: HTTP/1.1 (h11) on 127.0.0.1, port 0, in the test's
own trio run (so `MockClock` covers it), verifying every request's signature with the
Standard Webhooks library and every body against its schema, as a deployer's backend would.

It answers as scripted: each request takes the next entry of `script` (a status code, or
`HANG`: never answer), then 200 once the script is used up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import h11
import trio
from attrs import define, field
from standardwebhooks import Webhook

from tests.helpers import check_webhook_body

HANG: Final = "hang"


@define(eq=False)
class Receiver:
    secret: str
    script: list[int | str] = field(factory=list)
    url: str = ""
    attempts: list[tuple[str, dict[str, Any]]] = field(factory=list)
    """Every request, verified: its `webhook-id` and its body, parsed."""
    delivered: list[tuple[str, dict[str, Any]]] = field(factory=list)
    """The requests answered 2xx."""
    hanging: int = 0
    """Requests held unanswered right now."""
    on_delivered: Callable[[dict[str, Any]], None] | None = None
    _changed: trio.Event = field(factory=trio.Event)

    async def wait_until(self, condition: Callable[[Receiver], bool]) -> None:
        while not condition(self):
            await self._changed.wait()

    async def wait_delivered(self, count: int) -> list[dict[str, Any]]:
        await self.wait_until(lambda receiver: len(receiver.delivered) >= count)
        return [body for _, body in self.delivered]

    def _tick(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def serve(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request = await self._read(stream, connection)
                if request is None:
                    return
                headers, body = request
                await self._answer(stream, connection, headers, body)
                if connection.our_state is not h11.IDLE:  # not kept alive
                    return
                connection.start_next_cycle()

    async def _read(
        self, stream: trio.SocketStream, connection: h11.Connection
    ) -> tuple[dict[str, str], bytes] | None:
        headers: dict[str, str] = {}
        body = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65_536))
            elif isinstance(event, h11.Request):
                assert event.method == b"POST"
                headers = {name.decode(): value.decode() for name, value in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return headers, body
            else:  # ConnectionClosed, PAUSED
                return None

    async def _answer(
        self,
        stream: trio.SocketStream,
        connection: h11.Connection,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        verified = Webhook(self.secret).verify(body, headers)  # raises on a bad signature
        check_webhook_body(verified)
        assert headers["content-type"] == "application/json"
        self.attempts.append((headers["webhook-id"], verified))
        self._tick()
        behaviour = self.script.pop(0) if self.script else 200
        if behaviour == HANG:
            self.hanging += 1
            try:
                await trio.sleep(math.inf)
            finally:
                self.hanging -= 1
        assert isinstance(behaviour, int)
        response = h11.Response(status_code=behaviour, headers=[("content-length", "0")])
        await stream.send_all(connection.send(response) + connection.send(h11.EndOfMessage()))
        if 200 <= behaviour < 300:
            self.delivered.append((headers["webhook-id"], verified))
            if self.on_delivered is not None:
                self.on_delivered(verified)
            self._tick()


async def start_receiver(
    nursery: trio.Nursery, secret: str, script: list[int | str] | None = None
) -> Receiver:
    receiver = Receiver(secret, list(script or []))
    listeners = await nursery.start(partial(trio.serve_tcp, receiver.serve, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    receiver.url = f"http://127.0.0.1:{port}/hooks"
    return receiver


def body_types(bodies: list[dict[str, Any]]) -> list[str]:
    return [body["type"] for body in bodies]
