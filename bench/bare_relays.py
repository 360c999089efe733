"""Two bare pair relays, identical in behaviour, on the two transports ADR 0001 compares.

Protocol (text frames, JSON): a client's first message is ``{"pair": NAME}``; once both members
of a pair have sent it, each gets ``{"paired": NAME}``. After that every message
``{"to": NAME, ...}`` is parsed (as a real server must, to route it) and forwarded verbatim to
the other member of pair NAME. No validation, no limits, and pairs are never forgotten (a relay
lives for one benchmark run): only the transport's own cost remains.

    python bench/bare_relays.py {trio-websocket|callbox-transport} --port P [--tls CERT KEY]

``--tls`` (callbox-transport only): serve ``wss://`` with the certificate chain CERT and its key
KEY, as ``callbox serve`` does with ``TLS_CERT_FILE`` and ``TLS_KEY_FILE``.
"""

from __future__ import annotations

import argparse
from functools import partial

import orjson
import trio
import trio_websocket

from callbox.server.transport.config import TransportConfig
from callbox.server.transport.connection import Connection
from callbox.server.transport.listener import serve_websockets
from callbox.server.transport.tls import ServerCertificate

HOST = "127.0.0.1"


async def serve_trio_websocket(port: int, certificate: ServerCertificate | None) -> None:
    """The idiomatic trio-websocket relay: one handler task per connection, awaiting each send."""
    pairs: dict[str, list[trio_websocket.WebSocketConnection]] = {}

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        name = orjson.loads(await ws.get_message())["pair"]
        members = pairs.setdefault(name, [])
        members.append(ws)
        if len(members) == 2:
            for member in members:
                await member.send_message(orjson.dumps({"paired": name}).decode())
        try:
            while True:
                data = await ws.get_message()
                first, second = pairs[orjson.loads(data)["to"]]
                await (second if first is ws else first).send_message(data)
        except trio_websocket.ConnectionClosed:  # this client, or its peer, went away
            return

    if certificate is not None:
        raise SystemExit("--tls: only the callbox-transport relay")
    await trio_websocket.serve_websocket(handler, HOST, port, ssl_context=None)


class CallboxRelay:
    """The same relay as a synchronous `ConnectionHandler`: forwarding never awaits."""

    def __init__(self) -> None:
        self.pairs: dict[str, list[Connection]] = {}

    def on_open(self, conn: Connection) -> None:
        pass

    def on_text(self, conn: Connection, data: bytes) -> None:
        message = orjson.loads(data)
        to = message.get("to")
        if to is not None:
            first, second = self.pairs[to]
            (second if first is conn else first).send_text(data)
            return
        name = message["pair"]
        members = self.pairs.setdefault(name, [])
        members.append(conn)
        if len(members) == 2:
            for member in members:
                member.send_text(orjson.dumps({"paired": name}))

    def on_binary(self, conn: Connection, data: bytes) -> None:
        pass

    def on_close(self, conn: Connection, code: int | None, reason: str) -> None:
        pass


async def serve_callbox_transport(port: int, certificate: ServerCertificate | None) -> None:
    await serve_websockets(CallboxRelay(), TransportConfig(), HOST, port, certificate=certificate)


SERVERS = {"trio-websocket": serve_trio_websocket, "callbox-transport": serve_callbox_transport}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(SERVERS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve wss://")
    args = parser.parse_args()
    certificate = None if args.tls is None else ServerCertificate(*args.tls)
    trio.run(partial(SERVERS[args.target], args.port, certificate))


if __name__ == "__main__":
    main()
