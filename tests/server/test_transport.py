"""Tests for the WebSocket transport over real sockets on 127.0.0.1 (under MockClock for the
timers), with trio-websocket clients and a hand-rolled websockets ClientProtocol client."""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import CONNECTING, OPEN
from websockets.uri import parse_uri

from callbox.server.transport.config import TransportConfig
from callbox.server.transport.connection import Connection
from callbox.server.transport.http import HttpHandler, HttpRequest, HttpResponse
from callbox.server.transport.listener import (
    ACCEPT_RETRY_SECONDS,
    SharedServices,
    _accept,
    serve_websockets,
)

# Short close timeout so a misbehaving peer cannot stall a test; hang guard for every wait.
CONFIG = TransportConfig(close_timeout=1.0)
HANG_GUARD = 10.0


class EchoHandler:
    """Echoes text; a few magic messages drive the server-side behaviours under test."""

    def __init__(self) -> None:
        self.opened: list[int] = []
        self.closed: list[tuple[int, int | None, str]] = []
        self.texts: list[bytes] = []
        self.binaries: list[bytes] = []
        self.flood_peaks: list[int] = []
        self.connections: dict[int, Connection] = {}
        self.fail_on_close: set[int] = set()

    def on_open(self, conn: Connection) -> None:
        self.opened.append(conn.id)
        self.connections[conn.id] = conn

    def on_text(self, conn: Connection, data: bytes) -> None:
        self.texts.append(data)
        if data == b"boom":
            raise RuntimeError("handler bug")
        if data == b"close-me":
            conn.close(1000, "bye")
        elif data == b"fail-on-close":
            self.fail_on_close.add(conn.id)
            conn.close()
        elif data == b"flood":
            self._flood(conn)
        else:
            conn.send_text(data)

    def on_binary(self, conn: Connection, data: bytes) -> None:
        self.binaries.append(data)
        conn.send_text('{"error":"binary frames are not supported"}')

    def on_close(self, conn: Connection, code: int | None, reason: str) -> None:
        self.closed.append((conn.id, code, reason))
        if conn.id in self.fail_on_close:
            raise RuntimeError("handler bug in on_close")

    def _flood(self, conn: Connection) -> None:
        payload = b"x" * 16 * 1024
        peak = 0
        for _ in range(8192):  # at most 128 MiB: far beyond kernel buffers + the bound
            if not conn.is_open:
                break
            conn.send_text(payload)
            peak = max(peak, conn.statistics().buffered_bytes)
        self.flood_peaks.append(peak)

    def close_info(self, conn_id: int) -> tuple[int | None, str]:
        [(code, reason)] = [(c, r) for i, c, r in self.closed if i == conn_id]
        return code, reason


async def wait_for(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(HANG_GUARD):
        while not predicate():
            await trio.sleep(0.005)


@asynccontextmanager
async def running_server(
    handler: EchoHandler,
    config: TransportConfig = CONFIG,
    http_handler: HttpHandler | None = None,
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(serve_websockets, handler, config, "127.0.0.1", 0, http_handler=http_handler)
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def ws_url(port: int, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{port}{path}"


async def echo(ws: WebSocketConnection, text: str) -> None:
    await ws.send_message(text)
    with trio.fail_after(HANG_GUARD):
        assert await ws.get_message() == text


class RawClient:
    """websockets' sans-I/O client over a socket, for what trio-websocket cannot do:
    fragments, invalid UTF-8, not answering pings, TCP resets mid-handshake."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.proto = ClientProtocol(parse_uri("ws://test/ws"))

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.handshake()
        return client

    async def handshake(self) -> None:
        self.proto.send_request(self.proto.connect())
        await self.flush()
        while self.proto.state is CONNECTING:
            await self.receive()
        assert self.proto.state is OPEN

    async def flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                await self.stream.send_all(data)

    async def receive(self) -> list[Frame]:
        """Feed one read to the protocol and return the frames; [] at EOF. Never replies."""
        data = await self.stream.receive_some()
        if not data:
            self.proto.receive_eof()
            return []
        self.proto.receive_data(data)
        return [e for e in self.proto.events_received() if isinstance(e, Frame)]

    async def frames_until_eof(self, hang_guard: float = HANG_GUARD) -> list[Frame]:
        frames: list[Frame] = []
        with trio.fail_after(hang_guard):
            while batch := await self.receive():
                frames += batch
        return frames

    async def reset(self) -> None:
        """Close with SO_LINGER 0, so the server sees a TCP RST instead of a FIN."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.stream.aclose()


def reason_of(closed: pytest.ExceptionInfo[ConnectionClosed]) -> tuple[int, str | None]:
    reason = closed.value.reason
    assert reason is not None
    return reason.code, reason.reason


def close_frame(frames: list[Frame]) -> Close:
    [close] = [Close.parse(f.data) for f in frames if f.opcode is Opcode.CLOSE]
    return close


# -- basic messaging ---------------------------------------------------------------------------


async def test_echo_round_trip_delivers_bytes() -> None:
    handler = EchoHandler()
    async with running_server(handler) as port, open_websocket_url(ws_url(port)) as ws:
        await echo(ws, "hello ✓")
    assert handler.texts == ["hello ✓".encode()]
    assert all(type(t) is bytes for t in handler.texts)


async def test_many_messages_arrive_in_order() -> None:
    handler = EchoHandler()
    count = 2000
    async with running_server(handler) as port, open_websocket_url(ws_url(port)) as ws:

        async def sender() -> None:
            for i in range(count):
                await ws.send_message(f'{{"seq":{i}}}')

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            with trio.fail_after(HANG_GUARD):
                received = [await ws.get_message() for _ in range(count)]
    assert received == [f'{{"seq":{i}}}' for i in range(count)]
    [conn] = handler.connections.values()
    stats = conn.statistics()
    assert stats.messages_in == count
    assert stats.messages_out == count
    assert stats.bytes_in > 0
    assert stats.bytes_out > 0
    assert stats.buffered_bytes == 0


def has_input(client: RawClient) -> bool:
    """Whether the server's bytes have reached this client's socket (nothing is read)."""
    readable, _, _ = select.select([client.stream.socket.fileno()], [], [], 0)
    return bool(readable)


class BurstHandler(EchoHandler):
    """On ``burst``, sends three messages to every other client, noting after each send
    whether anything has reached that client yet."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: list[RawClient] = []  # in the order their connections opened
        self.arrived_during_burst: list[bool] = []

    def on_text(self, conn: Connection, data: bytes) -> None:
        if data != b"burst":
            return super().on_text(conn, data)
        for other, client in zip(self.connections.values(), self.clients, strict=True):
            if other is not conn:
                for part in range(3):
                    other.send_text(b"part %d" % part)
                    self.arrived_during_burst.append(has_input(client))
        return None


async def test_output_of_a_read_is_held_until_the_read_is_handled() -> None:
    handler = BurstHandler()
    async with running_server(handler) as port:
        for _ in range(2):
            handler.clients.append(await RawClient.connect(port))
            await wait_for(lambda: len(handler.opened) == len(handler.clients))
        sender, receiver = handler.clients
        sender.proto.send_text(b"burst")
        await sender.flush()
        with trio.fail_after(HANG_GUARD):
            frames = await receiver.receive()
        # Held while the read was handled, then sent at once: they arrive in one read.
        assert handler.arrived_during_burst == [False, False, False]
        assert [bytes(f.data) for f in frames] == [b"part 0", b"part 1", b"part 2"]
        # Output from anything but a read (here the test's own task) is not held.
        handler.connections[handler.opened[1]].send_text(b"now")
        assert has_input(receiver)
        assert [bytes(f.data) for f in await receiver.receive()] == [b"now"]


async def test_fragmented_message_is_reassembled() -> None:
    handler = EchoHandler()
    async with running_server(handler) as port:
        client = await RawClient.connect(port)
        client.proto.send_text(b'{"a":', fin=False)
        client.proto.send_continuation(b"1", fin=False)
        client.proto.send_continuation(b"}", fin=True)
        await client.flush()
        with trio.fail_after(HANG_GUARD):
            frames = await client.receive()
        assert [(f.opcode, f.data) for f in frames] == [(Opcode.TEXT, b'{"a":1}')]
        await client.stream.aclose()
    assert handler.texts == [b'{"a":1}']


async def test_binary_frame_goes_to_on_binary() -> None:
    handler = EchoHandler()
    async with running_server(handler) as port, open_websocket_url(ws_url(port)) as ws:
        await ws.send_message(b"\x00\x01binary")
        with trio.fail_after(HANG_GUARD):
            assert await ws.get_message() == '{"error":"binary frames are not supported"}'
    assert handler.binaries == [b"\x00\x01binary"]
    assert handler.texts == []


# -- open/close bookkeeping --------------------------------------------------------------------


async def test_clean_client_close_calls_open_and_close_once() -> None:
    handler = EchoHandler()
    async with running_server(handler) as port:
        async with open_websocket_url(ws_url(port)) as ws:
            await echo(ws, "hi")
        await wait_for(lambda: len(handler.closed) == 1)
        [conn_id] = handler.opened
        assert handler.close_info(conn_id) == (1000, "")
        assert not handler.connections[conn_id].is_open


async def test_server_close_reaches_client_and_is_idempotent() -> None:
    handler = EchoHandler()
    async with running_server(handler) as port:
        async with open_websocket_url(ws_url(port)) as ws:
            await ws.send_message("close-me")
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(HANG_GUARD):
                await ws.get_message()
            assert reason_of(closed) == (1000, "bye")
        await wait_for(lambda: len(handler.closed) == 1)
        [conn] = handler.connections.values()
        conn.close(1011, "again")  # no-op
        conn.send_text("late")  # no-op, no exception
        assert handler.close_info(conn.id) == (1000, "bye")


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_abrupt_tcp_close_calls_on_close_once(reset: bool) -> None:
    handler = EchoHandler()
    async with running_server(handler) as port:
        client = await RawClient.connect(port)
        await wait_for(lambda: len(handler.opened) == 1)
        await (client.reset() if reset else client.stream.aclose())
        await wait_for(lambda: len(handler.closed) == 1)
        [conn_id] = handler.opened
        assert handler.close_info(conn_id) == (None, "")
        await trio.sleep(0.05)  # nothing else is reported later
        assert len(handler.closed) == 1


# -- limits and protocol errors ----------------------------------------------------------------


async def test_oversize_message_closes_1009() -> None:
    handler = EchoHandler()
    # The failed connection waits close_timeout for an EOF trio-websocket never sends.
    config = TransportConfig(max_message_bytes=1024, close_timeout=0.2)
    async with running_server(handler, config) as port:
        async with open_websocket_url(ws_url(port)) as ws:
            await echo(ws, "x" * 1024)  # exactly the limit is fine
            await ws.send_message("x" * 1025)
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(HANG_GUARD):
                await ws.get_message()
            assert reason_of(closed)[0] == 1009
        await wait_for(lambda: len(handler.closed) == 1)
    assert handler.close_info(handler.opened[0])[0] == 1009
    assert handler.texts == [b"x" * 1024]


async def test_invalid_utf8_closes_1007() -> None:
    handler = EchoHandler()
    async with running_server(handler) as port:
        client = await RawClient.connect(port)
        client.proto.send_text(b'{"a":"\xff"}')
        await client.flush()
        assert close_frame(await client.frames_until_eof()).code == 1007
        await client.stream.aclose()
        await wait_for(lambda: len(handler.closed) == 1)
    assert handler.texts == []
    assert handler.close_info(handler.opened[0])[0] == 1007


async def test_slow_reader_is_closed_1013_and_buffer_stays_bounded() -> None:
    handler = EchoHandler()
    config = TransportConfig(send_buffer_bytes=256 * 1024, close_timeout=5.0)
    async with (
        running_server(handler, config) as port,
        open_websocket_url(ws_url(port), message_queue_size=1) as ws,
    ):
        await ws.send_message("flood")  # the server floods; we do not read meanwhile
        await wait_for(lambda: len(handler.flood_peaks) == 1)
        [peak] = handler.flood_peaks
        assert 0 < peak <= config.send_buffer_bytes
        # Now read: everything that was accepted arrives, then the 1013 close frame.
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(HANG_GUARD):
            while True:
                assert len(await ws.get_message()) == 16 * 1024
        assert reason_of(closed) == (
            1013,
            "send buffer overflow",
        )
        await wait_for(lambda: len(handler.closed) == 1)
    assert handler.close_info(handler.opened[0]) == (1013, "send buffer overflow")


async def test_http_requests_on_other_paths() -> None:
    async def http_handler(request: HttpRequest) -> HttpResponse | None:
        if request.path == "/healthz" and request.query == "probe=1":
            headers = [("Content-Type", "application/json"), ("X-Check", "1")]
            return 200, [*headers, ("Content-Length", "999")], b'{"ok":true}'
        return None

    async def get(port: int, target: str) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = b""
        with trio.fail_after(HANG_GUARD):
            while chunk := await stream.receive_some():
                response += chunk
        await stream.aclose()
        return response

    handler = EchoHandler()
    async with running_server(handler, http_handler=http_handler) as port:
        ok = await get(port, "/healthz?probe=1")
        missing = await get(port, "/nope")
        plain_get_on_ws = await get(port, "/ws")
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Type: application/json" in head
    assert b"\r\nX-Check: 1" in head
    assert b"\r\nContent-Length: 11" in head
    assert head.count(b"Content-Length") == 1
    assert b"text/plain" not in head
    assert body == b'{"ok":true}'
    assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert plain_get_on_ws.startswith(b"HTTP/1.1 426 ")
    assert handler.opened == []
    assert handler.closed == []


async def test_http_without_handler_is_404() -> None:
    async with running_server(EchoHandler()) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(HANG_GUARD):
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 404 ")
        await stream.aclose()


# -- shutdown and fault isolation --------------------------------------------------------------


async def test_shutdown_sends_1001_to_every_client() -> None:
    handler = EchoHandler()
    server_scope = trio.CancelScope()
    server_done = trio.Event()

    async def run_server(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with server_scope:
            await serve_websockets(
                handler, TransportConfig(), "127.0.0.1", 0, task_status=task_status
            )
        server_done.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(run_server)
        port = listeners[0].socket.getsockname()[1]
        async with (
            open_websocket_url(ws_url(port)) as ws1,
            open_websocket_url(ws_url(port)) as ws2,
            open_websocket_url(ws_url(port)) as ws3,
        ):
            for ws in (ws1, ws2, ws3):
                await echo(ws, "before shutdown")
            server_scope.cancel()
            for ws in (ws1, ws2, ws3):
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(HANG_GUARD):
                    await ws.get_message()
                assert reason_of(closed) == (
                    1001,
                    "server shutting down",
                )
            with trio.fail_after(HANG_GUARD):
                await server_done.wait()
    assert sorted(handler.closed) == [(i, 1001, "server shutting down") for i in handler.opened]


class FillHandler(EchoHandler):
    """On ``fill``, sends 16 MiB: more than a client that does not read lets the kernel take,
    so the rest waits for the connection's writer task."""

    def on_text(self, conn: Connection, data: bytes) -> None:
        if data != b"fill":
            return super().on_text(conn, data)
        self.texts.append(data)
        for _ in range(1024):
            conn.send_text(b"x" * 16 * 1024)
        return None


async def test_connection_ending_while_its_writer_runs_stops_the_writer_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = FillHandler()
    config = TransportConfig(close_timeout=0.5, send_buffer_bytes=64 * 1024 * 1024)
    async with running_server(handler, config) as port:
        client = await RawClient.connect(port)  # from here on it reads nothing
        client.proto.send_text(b"fill")
        await client.flush()
        await wait_for(lambda: handler.texts == [b"fill"])
        [conn] = handler.connections.values()
        assert conn.statistics().buffered_bytes > 0  # what the writer is still sending
        # The client's close ends the connection: the server's answer is queued behind the
        # buffered data, which the writer was sending; the connection task must take over.
        client.proto.send_close(1000)
        await client.flush()
        await wait_for(lambda: bool(handler.closed))
    assert handler.closed == [(conn.id, 1000, "")]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_one_connection_failing_mid_close_does_not_affect_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression for trio-websocket #175/#184: a pong sent while closing raised and took down
    the whole server nursery, disconnecting every user."""
    handler = EchoHandler()
    async with (
        running_server(handler) as port,
        open_websocket_url(ws_url(port)) as bystander1,
        open_websocket_url(ws_url(port)) as bystander2,
        open_websocket_url(ws_url(port)) as bystander3,
    ):
        bystanders = (bystander1, bystander2, bystander3)
        for ws in bystanders:
            await echo(ws, "hello")

        # 1. The server starts closing; the client pings right then instead of answering the
        #    close (the server pongs while CLOSING - the upstream crash), sends more data, then
        #    resets TCP instead of finishing the handshake.
        pinger = await RawClient.connect(port)
        pinger.proto.send_text(b"close-me")
        await pinger.flush()
        with trio.fail_after(HANG_GUARD):
            while not any(f.opcode is Opcode.CLOSE for f in await pinger.receive()):
                pass
        pinger.proto.data_to_send()  # drop the automatic close reply
        for frame in (Frame(Opcode.PING, b"are you there"), Frame(Opcode.TEXT, b"one more")):
            await pinger.stream.send_all(frame.serialize(mask=True, extensions=[]))
        pong = Frame(Opcode.PONG, b"are you there").serialize(mask=False, extensions=[])
        with trio.fail_after(HANG_GUARD):  # raw bytes: the client protocol ignores post-close
            assert await pinger.stream.receive_some() == pong
        await pinger.reset()

        # 2. The handler raises in on_text.
        async with open_websocket_url(ws_url(port)) as crasher:
            await crasher.send_message("boom")
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(HANG_GUARD):
                await crasher.get_message()
            assert reason_of(closed)[0] == 1011

        # 3. The client resets TCP right after asking the server to close.
        resetter = await RawClient.connect(port)
        resetter.proto.send_text(b"close-me")
        await resetter.flush()
        await resetter.reset()

        # 4. The handler raises in on_close.
        async with open_websocket_url(ws_url(port)) as closer:
            await closer.send_message("fail-on-close")
            with pytest.raises(ConnectionClosed), trio.fail_after(HANG_GUARD):
                await closer.get_message()

        await wait_for(lambda: len(handler.closed) == 4)
        for ws in bystanders:
            for i in range(20):
                await echo(ws, f"still here {i}")
        async with open_websocket_url(ws_url(port)) as newcomer:
            await echo(newcomer, "new connections are accepted")
        await wait_for(lambda: len(handler.closed) == 5)

    assert sorted(i for i, _, _ in handler.closed) == sorted(handler.opened)  # once each
    logged = [r.getMessage() for r in caplog.records if r.name == "callbox.transport"]
    assert any("failed; closing it" in m for m in logged)
    assert any("on_close failed" in m for m in logged)


# -- timers (virtual time) ---------------------------------------------------------------------


async def test_heartbeat_timeout_closes_1011(autojump_clock: trio.testing.MockClock) -> None:
    handler = EchoHandler()
    config = TransportConfig()
    async with running_server(handler, config) as port:
        client = await RawClient.connect(port)
        opened_at = trio.current_time()
        frames = await client.frames_until_eof(hang_guard=120)  # never answers the pings
        closed_at = trio.current_time()
        await wait_for(lambda: bool(handler.closed))
    pings = [f for f in frames if f.opcode is Opcode.PING]
    assert len(pings) >= 1
    close = close_frame(frames)
    assert (close.code, close.reason) == (1011, "heartbeat timeout")
    assert closed_at - opened_at >= config.heartbeat_timeout
    assert handler.closed == [(handler.opened[0], 1011, "heartbeat timeout")]


async def test_heartbeat_keeps_a_responsive_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = EchoHandler()
    async with running_server(handler, TransportConfig()) as port:
        client = await RawClient.connect(port)
        pings = 0
        with trio.move_on_after(120):
            while True:
                frames = await client.receive()
                assert frames, "server closed the connection"
                pings += sum(f.opcode is Opcode.PING for f in frames)
                await client.flush()  # the protocol's automatic pongs
        assert pings >= 7
        assert handler.closed == []
        client.proto.send_close(1000)
        await client.flush()
        assert close_frame(await client.frames_until_eof()).code == 1000
        await wait_for(lambda: bool(handler.closed))
    assert handler.closed == [(handler.opened[0], 1000, "")]


async def test_handshake_timeout_drops_silent_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = EchoHandler()
    async with running_server(handler, TransportConfig()) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        with trio.fail_after(HANG_GUARD + TransportConfig().handshake_timeout):
            assert await stream.receive_some() == b""
        assert trio.current_time() - start >= TransportConfig().handshake_timeout
        await stream.aclose()
    assert handler.opened == []
    assert handler.closed == []


class FlakyListener(trio.abc.Listener[trio.SocketStream]):
    """Its `accept` raises `errors` first, then hands out `stream`, then waits forever."""

    def __init__(self, errors: list[OSError], stream: trio.SocketStream | None) -> None:
        self.errors = errors
        self.stream = stream
        self.closed = False

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        if self.stream is None:
            await trio.sleep_forever()
        stream, self.stream = self.stream, None
        return stream

    async def aclose(self) -> None:
        self.closed = True


async def test_accept_waits_and_retries_when_out_of_descriptors(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    handler = EchoHandler()
    client_socket, server_socket = trio.socket.socketpair()  # what the listener "accepts"
    listener = FlakyListener(
        [OSError(errno.EMFILE, "Too many open files")], trio.SocketStream(server_socket)
    )
    async with trio.open_nursery() as nursery, trio.SocketStream(client_socket) as client_stream:
        start = trio.current_time()
        shared = SharedServices(nursery, CONFIG)
        nursery.start_soon(_accept, listener, handler, CONFIG, None, shared)
        await RawClient(client_stream).handshake()
        assert trio.current_time() - start >= ACCEPT_RETRY_SECONDS
        assert len(handler.opened) == 1
        nursery.cancel_scope.cancel()
    assert "accept failed" in caplog.text
    assert listener.closed


async def test_accept_gives_up_on_other_errors() -> None:
    listener = FlakyListener([OSError(errno.EBADF, "Bad file descriptor")], None)
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="Bad file")):
        async with trio.open_nursery() as nursery:
            shared = SharedServices(nursery, CONFIG)
            await _accept(listener, EchoHandler(), CONFIG, None, shared)
    assert listener.closed


@pytest.fixture(autouse=True)
def _quiet_protocol_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callbox.transport.protocol")
