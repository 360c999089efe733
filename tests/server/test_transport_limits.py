"""What hostile or broken clients can make the transport hold, and what they get (issue 10):
fragments, request heads, handshakes at once, HTTP statuses, garbage left by ended connections.
"""

from __future__ import annotations

import gc
import logging
import tracemalloc
from collections import Counter
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from websockets.frames import Opcode

from callbox.config import Config
from callbox.server.app import serve
from callbox.server.transport.config import TransportConfig
from callbox.server.transport.connection import Connection
from callbox.server.transport.http import HttpHandler, HttpRequest, HttpResponse

from .test_transport import (
    CONFIG,
    HANG_GUARD,
    EchoHandler,
    RawClient,
    close_frame,
    running_server,
    wait_for,
)


@pytest.fixture(autouse=True)
def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Hostile input is expected: whatever it is, the log shows no traceback, at any level."""
    caplog.set_level(logging.DEBUG, logger="callbox")
    yield
    assert [r.getMessage() for r in caplog.get_records("call") if r.exc_info] == []


# -- fragmented messages -----------------------------------------------------------------------


async def test_a_message_of_too_many_fragments_closes_1009() -> None:
    handler = EchoHandler()
    config = TransportConfig(max_message_fragments=8, close_timeout=1.0)
    async with running_server(handler, config) as port:
        client = await RawClient.connect(port)
        client.proto.send_text(b"a", fin=False)
        for _ in range(6):
            client.proto.send_continuation(b"", fin=False)
        client.proto.send_continuation(b"b", fin=True)  # the 8th: still fine
        client.proto.send_text(b"", fin=False)
        for _ in range(8):  # empty ones too: they cost no payload byte, but memory and time
            client.proto.send_continuation(b"", fin=False)
        await client.flush()
        close = close_frame(await client.frames_until_eof())
        await client.stream.aclose()
        await wait_for(lambda: len(handler.closed) == 1)
    assert (close.code, close.reason) == (1009, "too many fragments")
    assert handler.texts == [b"ab"]


def transport_allocations(snapshot: tracemalloc.Snapshot) -> int:
    traces = snapshot.filter_traces([tracemalloc.Filter(True, "*/callbox/server/transport/*")])
    return sum(stat.size for stat in traces.statistics("filename"))


async def test_an_unfinished_message_costs_its_payload_not_its_fragments() -> None:
    """2-byte fragments used to be kept one bytes object each (~20 times the payload)."""
    handler = EchoHandler()
    fragments = 4000
    config = TransportConfig(max_message_fragments=fragments + 1)
    async with running_server(handler, config) as port:
        client = await RawClient.connect(port)
        tracemalloc.start()
        try:
            before = transport_allocations(tracemalloc.take_snapshot())
            client.proto.send_text(b"ab", fin=False)
            for _ in range(fragments - 1):
                client.proto.send_continuation(b"cd", fin=False)
            client.proto.send_ping(b"after")  # its pong says the fragments were handled
            await client.flush()
            with trio.fail_after(HANG_GUARD):
                while not any(f.opcode is Opcode.PONG for f in await client.receive()):
                    pass
            held = transport_allocations(tracemalloc.take_snapshot()) - before
        finally:
            tracemalloc.stop()
        payload = 2 * fragments
        assert held < 2 * payload  # a bytearray may over-allocate, up to about 1/8
        client.proto.send_continuation(b"!", fin=True)
        await client.flush()
        with trio.fail_after(HANG_GUARD):
            [echoed] = await client.receive()
        assert echoed.data == b"ab" + b"cd" * (fragments - 1) + b"!"
        await client.stream.aclose()


# -- one connection's large read is not handled in one go -------------------------------------


class TurnTakingHandler(EchoHandler):
    """Notes when the first message of connection A arrives, so that B can send only then."""

    def __init__(self) -> None:
        super().__init__()
        self.a_started = trio.Event()

    def on_text(self, conn: Connection, data: bytes) -> None:
        if data == b"a0":
            self.a_started.set()
        super().on_text(conn, data)


async def test_a_large_read_is_handled_in_turns_with_other_connections() -> None:
    """Issue 10: a read of many small frames used to be parsed and handled in one step (64 KiB
    of empty frames: ~65 ms), while every other connection waited. B sends only once A's read is
    being handled, and is handled before A's read is done; A's messages, some of them cut by the
    turns, all arrive in order."""
    handler = TurnTakingHandler()
    config = TransportConfig(feed_size=256, frames_per_turn=16)
    a_messages = [b"a%d" % n for n in range(400)]  # about 4 KiB: 25 turns
    async with running_server(handler, config) as port:
        a, b = await RawClient.connect(port), await RawClient.connect(port)
        for message in a_messages:
            a.proto.send_text(message)
        await a.stream.send_all(b"".join(a.proto.data_to_send()))  # one write, one read
        with trio.fail_after(HANG_GUARD):
            await handler.a_started.wait()
        b.proto.send_text(b"b")
        await b.flush()
        await wait_for(lambda: len(handler.texts) == len(a_messages) + 1)
        await a.stream.aclose()
        await b.stream.aclose()
    assert [text for text in handler.texts if text != b"b"] == a_messages
    assert handler.texts.index(b"b") < len(a_messages)


# -- request heads and handshakes --------------------------------------------------------------


def paths_handler(requested: list[str]) -> HttpHandler:
    """200 for every path but /nope, noting which were asked for."""

    async def http(request: HttpRequest) -> HttpResponse | None:
        if request.path == "/nope" or request.method not in ("GET", "HEAD"):
            return None
        requested.append(request.path)
        return 200, [("Content-Type", "text/plain")], b"ok\n"

    return http


async def exchange(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    """Send raw bytes, read until the server closes; the response."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        if half_close:
            await stream.send_eof()
        response = b""
        with trio.fail_after(HANG_GUARD):
            while chunk := await stream.receive_some():
                response += chunk
    return response


def parse_response(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def test_a_request_head_over_the_bound_gets_431() -> None:
    config = TransportConfig(max_request_head_bytes=4096, close_timeout=1.0)
    requested: list[str] = []
    padding = "".join(f"X-Pad-{i}: {'p' * 200}\r\n" for i in range(20))  # ~4.3 KB, 20 lines
    async with running_server(EchoHandler(), config, paths_handler(requested)) as port:
        small = await exchange(port, b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        large = await exchange(port, f"GET /large HTTP/1.1\r\n{padding}\r\n".encode())
    assert parse_response(small)[0] == 200
    assert parse_response(large)[0] == 431
    assert requested == ["/small"]


async def test_handshakes_beyond_the_cap_wait_for_a_slot_until_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = TransportConfig(max_handshakes=2)
    requested: list[str] = []
    async with running_server(EchoHandler(), config, paths_handler(requested)) as port:

        async def connect(request: bytes) -> trio.SocketStream:
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(request)
            await trio.testing.wait_all_tasks_blocked()  # the server has read what it will
            return client

        first = await connect(b"GET /first HTTP/1.1\r\n")  # holds a slot, unfinished
        second = await connect(b"GET /second HTTP/1.1\r\n")  # holds the other
        third = await connect(b"GET /third HTTP/1.1\r\n\r\n")
        assert requested == []  # complete, but waiting: not read
        await first.send_all(b"\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert requested == ["/first", "/third"]  # the slot it freed went to the one waiting
        fourth = await connect(b"GET /fourth HTTP/1.1\r\n")  # takes the free slot
        fifth = await connect(b"GET /fifth HTTP/1.1\r\n\r\n")  # waits until its deadline
        clients = (first, second, third, fourth, fifth)
        responses = [await read_all(client) for client in clients]
        for client in clients:
            await client.aclose()
    assert [parse_response(response)[0] for response in responses] == [200, 408, 200, 408, 503]
    assert requested == ["/first", "/third"]


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    response = b""
    while chunk := await stream.receive_some():
        response += chunk
    return response


# -- every request gets an HTTP status ---------------------------------------------------------

GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status", "headers"),
    [
        (b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200, {"content-length": "3"}),
        (b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, {}),
        (b"HEAD /ws HTTP/1.1\r\nHost: x\r\n\r\n", 426, {"upgrade": "websocket"}),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405, {"allow": "GET, HEAD"}),
        (b"DELETE /ws HTTP/1.1\r\nHost: x\r\n\r\n", 405, {"allow": "GET, HEAD"}),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 405, {"allow": "GET, HEAD"}),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 426, {"upgrade": "websocket"}),
        (b"nonsense\r\n\r\n", 400, {}),
        (b"GET / HTTP/2.0\r\n\r\n", 400, {}),
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", 400, {}),
        (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400, {}),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400, {}),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, {}),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, {}),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", 431, {}),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431, {}),
    ],
    ids=lambda value: value.decode(errors="replace")[:28] if isinstance(value, bytes) else None,
)
async def test_every_request_gets_an_http_status(
    request_bytes: bytes, status: int, headers: dict[str, str]
) -> None:
    requested: list[str] = []
    async with running_server(EchoHandler(), CONFIG, paths_handler(requested)) as port:
        got_status, got_headers, body = parse_response(await exchange(port, request_bytes))
        if request_bytes.startswith(b"HEAD "):  # HEAD is GET without the body
            get = request_bytes.replace(b"HEAD ", b"GET ", 1)
            get_status, get_headers, get_body = parse_response(await exchange(port, get))
            assert body == b""
            assert get_status == got_status
            assert get_headers.keys() == got_headers.keys()
            assert got_headers["content-length"] == str(len(get_body))
    assert got_status == status
    assert got_headers.items() >= headers.items()
    assert got_headers["connection"] == "close"


async def test_an_incomplete_head_gets_400_at_eof_and_a_silent_client_nothing() -> None:
    async with running_server(EchoHandler(), CONFIG) as port:
        truncated = await exchange(port, b"GET / HTTP/1.1\r\nHost: x", half_close=True)
        silent = await exchange(port, b"", half_close=True)
    assert parse_response(truncated)[0] == 400
    assert silent == b""


# -- nothing left for the cyclic collector -----------------------------------------------------


async def end(client: RawClient, how: str) -> None:
    if how == "rst":
        await client.reset()
    elif how == "fin":  # no close frame
        await client.stream.aclose()
    else:
        client.proto.send_close(1000)
        await client.flush()
        await client.frames_until_eof()
        await client.stream.aclose()


async def churn(port: int) -> None:
    """Connections that end in every way, before and after `hello`; HTTP refusals too."""
    for how in ("rst", "fin", "close"):
        for hello in (False, True):
            client = await RawClient.connect(port)
            if hello:
                client.proto.send_text(b'{"type":"hello","user_id":"u-%s"}' % how.encode())
                await client.flush()
                with trio.fail_after(HANG_GUARD):
                    assert await client.receive()  # welcome
            await end(client, how)
    for request in (b"GET /ws HTTP/1.1\r\n\r\n", b"nonsense\r\n\r\n", b"GET /metrics HTTP/1.1"):
        await exchange(port, request, half_close=True)


@pytest.fixture
def garbage() -> Iterator[list[object]]:
    """What the cyclic collector finds, with the collector off meanwhile."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_ended_connections_leave_no_reference_cycles(
    garbage: list[object], autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve, Config(host="127.0.0.1", port=0))
        port = listeners[0].socket.getsockname()[1]
        await churn(port)  # warm-up: what is made once (caches, the first session's timers)
        await trio.sleep(120)  # past heartbeats (which hold a connection) and resume grace
        gc.collect()
        garbage.clear()
        await churn(port)
        await trio.sleep(120)
        gc.collect()
        nursery.cancel_scope.cancel()
    assert Counter(type(o).__qualname__ for o in garbage) == {}
