"""WebSocket transport: one trio task per connection driving websockets' sans-I/O protocol.

Why not trio-websocket: per message it hops reader task -> channel -> handler, takes a lock
and awaits the send, which caps a relay at ~13k msgs/s on one core. Here the connection task
reads a large chunk, feeds `ServerProtocol`, and calls the application synchronously; the
application's `send_text` writes to the non-blocking socket (what one read's messages produce
for a connection goes in one `send` once they are handled: `_OutputBatch`) and only spills into
a bounded buffer (drained by a short-lived writer task) when the kernel will not take more.

The send buffer never exceeds `send_buffer_bytes`: data, pings and pongs may fill it up to
`send_buffer_bytes - CLOSE_FRAME_RESERVE_BYTES`; one that does not fit is dropped and the
connection closed with 1013, whose close frame uses the reserve. A partially written frame is
never dropped, so the byte stream stays valid.

Shutdown: cancel the scope that runs `serve_websockets`. Each connection task then, in a
shielded scope time-boxed by `close_timeout`, sends close 1001 "server shutting down",
flushes what it can and reads (discarding) until the peer's close frame or EOF, then drops TCP.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import math
import socket
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any, Protocol

import attrs
import trio
from websockets.exceptions import InvalidMessage
from websockets.frames import BINARY, CONT, TEXT, Close, CloseCode, Frame
from websockets.http11 import Request, Response
from websockets.protocol import CLOSED, CONNECTING, OPEN, Event
from websockets.server import ServerProtocol

from callbox.server.http import HttpHandler, HttpResponse, bad_request, refusal, respond

__all__ = [
    "CLOSE_FRAME_RESERVE_BYTES",
    "Connection",
    "ConnectionHandler",
    "ConnectionStatistics",
    "Heartbeats",
    "HttpHandler",
    "HttpResponse",
    "SharedServices",
    "TransportConfig",
    "handle_stream",
    "serve_websockets",
]

logger = logging.getLogger("callbox.transport")


class _ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """websockets' logger, without the tracebacks it attaches to its debug records of refused
    handshakes and bad frames: hostile input is expected, and its stack says nothing. Records
    of warning and above (websockets' own failures) keep theirs."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level < logging.WARNING:
            kwargs.pop("exc_info", None)
        super().log(level, msg, *args, **kwargs)


# websockets logs "connection open/closed" at INFO per connection; keep it separately tunable.
_protocol_logger = _ProtocolLog(logging.getLogger("callbox.transport.protocol"))

#: Bytes of every send buffer kept free for the final close frame (2-byte header + <= 125-byte
#: payload), so a slow client can always be told why it is dropped without exceeding the bound.
CLOSE_FRAME_RESERVE_BYTES = 127
#: A close reason must fit in a 125-byte control frame payload next to the 2-byte code.
MAX_CLOSE_REASON_BYTES = 123
# First byte of an unmasked server close frame (FIN + opcode 0x8); lets the bound exempt it.
_CLOSE_FRAME_FIRST_BYTE = 0x88
# Errors that mean "the byte stream is gone", as opposed to bugs.
_TRANSPORT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)

_connection_ids = itertools.count(1)


@attrs.frozen
class TransportConfig:
    """Per-server limits; sizes in bytes, durations in seconds.

    What a client can make the server hold is bounded: a message by `max_message_bytes` (its
    fragments are joined as they arrive, and there may be `max_message_fragments` of them: an
    empty continuation frame costs no payload byte, so a count must bound those), a request head
    by `max_request_head_bytes` (h11's default; websockets alone allows 128 lines of 8 KiB), and
    the heads being read at once by `max_handshakes`, server-wide.

    A connection beyond `max_handshakes` waits for a slot, its request unread in the kernel's
    buffer, rather than being refused with 503: a burst of legitimate handshakes (every client
    reconnecting after a restart) is then served in turn instead of failing and coming back as
    retries. The wait counts towards `handshake_timeout`, so it is bounded too; a connection
    still waiting at the deadline gets 503, one whose head is still incomplete 408.
    """

    path: str = "/ws"
    max_message_bytes: int = 256 * 1024
    max_message_fragments: int = attrs.field(default=1024, validator=attrs.validators.gt(0))
    max_request_head_bytes: int = attrs.field(default=16 * 1024, validator=attrs.validators.gt(0))
    max_handshakes: int = attrs.field(default=256, validator=attrs.validators.gt(0))
    send_buffer_bytes: int = attrs.field(
        default=1024 * 1024, validator=attrs.validators.gt(CLOSE_FRAME_RESERVE_BYTES)
    )
    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 30.0
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    read_size: int = 64 * 1024
    feed_size: int = attrs.field(default=4 * 1024, validator=attrs.validators.gt(0))
    """A read larger than this is parsed this many bytes at a time, so that turns can be taken
    between (`frames_per_turn`). The parser takes ~6 us a frame, ~1 ms per KiB of empty ones:
    a 64 KiB read of them, handled whole, stalled every other connection ~65 ms."""
    frames_per_turn: int = attrs.field(default=256, validator=attrs.validators.gt(0))
    """Frames of one read handled before other connections get a turn (eight connections
    sending empty frames stalled a sentinel call's relay 235 ms; taking turns, ~20 ms)."""
    trusted_proxies: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    """Peers whose `X-Forwarded-For` names the client (see `Connection.client_host`)."""


@attrs.frozen
class ConnectionStatistics:
    """Snapshot of one connection's counters (bytes are wire bytes, messages are data messages)."""

    buffered_bytes: int
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int


class ConnectionHandler(Protocol):
    """Application callbacks; synchronous so the transport never hops tasks per message."""

    def on_open(self, conn: Connection) -> None: ...
    def on_text(self, conn: Connection, data: bytes) -> None: ...
    def on_binary(self, conn: Connection, data: bytes) -> None: ...
    def on_close(self, conn: Connection, code: int | None, reason: str) -> None: ...


class Connection:
    """One accepted WebSocket.

    `send_text` and `close` are synchronous and never raise for transport reasons: a relay
    calls them for many peers from one task and must not be blocked or broken by any of them.
    """

    # Slots: an idle connection is mostly this object, and a server holds thousands of them.
    __slots__ = (
        "_batch",
        "_batched",
        "_broken",
        "_bytes_in",
        "_bytes_out",
        "_close_deadline",
        "_config",
        "_data_limit",
        "_discard_input",
        "_eof_pending",
        "_eof_sent",
        "_finishing",
        "_fragment_count",
        "_fragments",
        "_fragments_are_text",
        "_going_away",
        "_handler",
        "_http_handler",
        "_in_flight",
        "_last_received",
        "_messages_in",
        "_messages_out",
        "_next_ping",
        "_opened",
        "_out",
        "_peer_eof",
        "_protocol",
        "_read_scope",
        "_responded",
        "_shared",
        "_sock",
        "_stream",
        "_writer",
        "client_host",
        "id",
        "remote",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: ConnectionHandler,
        config: TransportConfig,
        http_handler: HttpHandler | None,
        shared: SharedServices,
    ) -> None:
        self.id: int = next(_connection_ids)
        self.remote, self.client_host = _peer_of(stream)
        """The client's address: the peer's, or behind a trusted proxy the last address of
        the proxy's `X-Forwarded-For` (the one the proxy itself saw). Failed sign-ins are
        throttled by it, so behind a proxy it must not be the proxy's own."""
        self._stream = stream
        self._handler = handler
        self._http_handler = http_handler
        self._config = config
        self._protocol = ServerProtocol(max_size=config.max_message_bytes, logger=_protocol_logger)
        # Direct-write path: a second socket object on the same fd, detached before trio
        # closes the fd (after detach, a stray send fails with EBADF instead of hitting a
        # reused fd).
        self._sock: socket.socket | None = None
        if isinstance(stream, trio.SocketStream):
            self._sock = socket.socket(fileno=stream.socket.fileno())
            self._sock.setblocking(False)
        self._data_limit = config.send_buffer_bytes - CLOSE_FRAME_RESERVE_BYTES
        self._out = bytearray()
        self._in_flight = 0  # bytes handed to stream.send_all but not yet returned
        self._eof_pending = False  # protocol asked for a half-close; nothing may follow it
        self._eof_sent = False
        self._shared = shared
        self._writer: tuple[trio.CancelScope, trio.Event] | None = None
        self._finishing = False  # no more writer tasks: `_finish` drains inline
        self._batch = _output_batch()
        self._batched = False  # in `_batch.pending`: has output held until the batch ends
        self._read_scope = trio.CancelScope()
        self._close_deadline = math.inf
        self._last_received = trio.current_time()
        self._opened = False
        self._responded = False
        self._peer_eof = False
        self._broken = False
        self._discard_input = False
        self._going_away = False
        self._fragments = bytearray()  # of the message being received, joined as they come
        self._fragment_count = 0
        self._fragments_are_text = False
        self._messages_in = 0
        self._messages_out = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._next_ping = math.inf

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.remote}>"

    # -- public API ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._protocol.state is OPEN

    @property
    def last_received(self) -> float:
        """`trio.current_time()` when data last arrived: in `on_text`, when that text was read."""
        return self._last_received

    def send_text(self, data: bytes | str) -> None:
        """Queue one text message without awaiting; see the module docstring for why."""
        if self._protocol.state is not OPEN:
            return
        self._protocol.send_text(data.encode() if isinstance(data, str) else data)
        self._flush()
        if self._protocol.state is OPEN:  # not dropped by an overflow or a dead socket
            self._messages_out += 1

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (time-boxed by close_timeout); idempotent.

        An invalid close code is a programming error and raises websockets' ProtocolError;
        an over-long reason is truncated to fit in the close frame.
        """
        if self._protocol.state is not OPEN:
            return
        reason = reason.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")
        self._protocol.send_close(code, reason)
        self._start_close_timer()
        self._flush()

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            buffered_bytes=len(self._out) + self._in_flight,
            messages_in=self._messages_in,
            messages_out=self._messages_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
        )

    # -- connection task -------------------------------------------------------------------

    async def _serve(self) -> None:
        """The connection's task, from the handshake to the closed stream; never raises except
        for cancellation, so one connection's fault cannot reach the listener or the others.

        What an idle connection keeps is most of a server's memory, so this is the task's only
        frame above the read loop, and it has no nursery: a writer task, while one is needed,
        runs in the shared nursery.
        """
        try:
            try:
                with self._read_scope:
                    if await self._handshake():
                        await self._receive_loop()
            except trio.Cancelled:
                self._going_away = True  # the server is shutting down
                raise
            except Exception:
                logger.exception("%r: failed; closing it", self)
            finally:
                await self._finish()
        except Exception:
            logger.exception("%r: unexpected transport failure", self)
        finally:
            self._release_socket()
            self._release_protocol_errors()
            try:
                await trio.aclose_forcefully(self._stream)  # raises Cancelled again at shutdown
            finally:
                self._notify_closed()

    async def _handshake(self) -> bool:
        """Read the request head and answer it; whether the connection is a WebSocket now.

        At most `max_request_head_bytes` of the head are read, in one of the server's
        `max_handshakes` slots, within `handshake_timeout` of the accept, waiting for the slot
        included (`TransportConfig` says why a connection waits rather than being refused).
        """
        proto = self._protocol
        config = self._config
        waiting = True
        with trio.move_on_after(config.handshake_timeout) as timer:
            async with self._shared.handshakes:
                waiting = False
                while proto.state is CONNECTING and not proto.eof_sent:
                    room = config.max_request_head_bytes - self._bytes_in
                    if room <= 0:
                        self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                        break
                    try:
                        data = await self._stream.receive_some(min(room, config.read_size))
                    except _TRANSPORT_ERRORS as exc:
                        self._abort(exc)
                        break
                    if not data:
                        self._received_eof()
                        break
                    self._received(data)
        if timer.cancelled_caught:
            if waiting:
                self._refuse(HTTPStatus.SERVICE_UNAVAILABLE)
            elif self._bytes_in:
                self._refuse(HTTPStatus.REQUEST_TIMEOUT)
        return proto.state is OPEN

    async def _receive_loop(self) -> None:
        """Read, feed the protocol, call the handler; until EOF or the closing handshake is
        complete (both close frames seen: the peer may send nothing more, so no need to wait
        for its EOF - trio-websocket clients, for one, never close TCP themselves)."""
        read_size = self._config.read_size
        sock = self._sock
        if sock is not None:
            read_buffer = _shared_read_buffer(read_size)
        while True:
            try:
                if sock is None:
                    data: bytes | bytearray | memoryview = await self._stream.receive_some(
                        read_size
                    )
                else:
                    # `SocketStream.receive_some` on the raw socket, with fewer layers: less
                    # CPU per read, and a smaller stack kept by every idle connection waiting
                    # here. Cancelled before reading, never after; unlike `receive_some` it
                    # returns without the checkpoint that lets other tasks run, because the
                    # buffer is shared by every connection: the data is handled first.
                    await trio.lowlevel.checkpoint_if_cancelled()
                    while (received := _receive_into(sock, read_buffer)) is None:
                        await trio.lowlevel.wait_readable(sock)
                    data = read_buffer[:received]
            except _TRANSPORT_ERRORS as exc:
                self._abort(exc)
                return
            if self._broken:  # a send from another task found the socket dead meanwhile
                return
            if not data:
                self._received_eof()
                return
            if len(data) > self._config.feed_size:
                if await self._received_in_turns(memoryview(data), shared=sock is not None):
                    return
            elif self._received(data):
                return
            if sock is not None:  # done with the shared buffer: now let others run
                del data  # (and an idle connection must not keep a view of it)
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def _received_in_turns(self, data: memoryview, *, shared: bool) -> bool:
        """Parse a large read `feed_size` bytes at a time, and let other tasks run whenever
        `frames_per_turn` frames were handled since they last did; whether reading is over. If
        `data` is in the shared read buffer, what is left of it is copied out before waiting:
        the buffer is another connection's meanwhile. A read of a few large frames takes no
        turn, so its output still goes in one batch (a turn per slice, with a send call for
        every peer each, cut the relay of 3 KB messages by more than half)."""
        feed_size, most = self._config.feed_size, self._config.frames_per_turn
        self._note_read(len(data))
        proto = self._protocol
        batch = self._batch
        while True:
            while data and len(proto.events) < most:
                proto.receive_data(data[:feed_size])  # type: ignore[arg-type]  # copied: `+=`
                data = data[feed_size:]
            batch.holding = True
            try:
                self._handle(proto.events_received())
            finally:
                batch.release()
            if self._reading_over():
                return True
            if not data or self._discard_input:  # after a failure, the rest is dropped unread
                return False
            if shared:
                data, shared = memoryview(bytes(data)), False
            await trio.lowlevel.cancel_shielded_checkpoint()
            if self._broken:
                return True

    def _received_eof(self) -> None:
        self._peer_eof = True
        self._protocol.receive_eof()
        self._flush()

    def _received(self, data: bytes | bytearray | memoryview) -> bool:
        """Handle what one read brought; whether reading is over. (A function of its own, so
        that an idle connection does not keep its last data and messages alive.)"""
        self._note_read(len(data))
        proto = self._protocol
        proto.receive_data(data)  # type: ignore[arg-type]  # it copies any buffer: `+=`
        batch = self._batch
        batch.holding = True
        try:
            self._handle(proto.events_received())
        finally:
            batch.release()
        return self._reading_over()

    def _note_read(self, size: int) -> None:
        self._bytes_in += size
        self._last_received = trio.current_time()

    def _handle(self, events: list[Event]) -> None:
        """Answer control frames, hand messages over."""
        self._flush()  # pongs, close echo
        for event in events:
            if self._discard_input:
                break
            self._dispatch(event)

    def _reading_over(self) -> bool:
        """Whether the peer may send nothing more (both close frames seen); arms the close timer
        once a close is under way."""
        proto = self._protocol
        if proto.close_expected():
            self._start_close_timer()
        return proto.state is CLOSED or (
            proto.close_rcvd is not None and proto.close_sent is not None
        )

    def _dispatch(self, event: Event) -> None:
        if not isinstance(event, Frame):
            if isinstance(event, Request):  # ServerProtocol never emits a Response
                self._respond(event)
            return
        opcode = event.opcode
        if opcode is TEXT or opcode is BINARY:
            if event.fin:
                self._deliver(opcode is TEXT, bytes(event.data))
            else:
                self._fragments_are_text = opcode is TEXT
                self._fragments = bytearray(event.data)
                self._fragment_count = 1
        elif opcode is CONT:
            self._fragment_count += 1
            if self._fragment_count > self._config.max_message_fragments:
                # 1009, not 1008: the message is too big to process, in pieces rather than
                # bytes, and clients read 1008 as "too many sessions" (docs/protocol.md).
                self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                return
            self._fragments += event.data
            if event.fin:
                data = bytes(self._fragments)
                self._fragments = bytearray()
                self._deliver(self._fragments_are_text, data)
        # PING, PONG and CLOSE were already answered by the protocol.

    def _deliver(self, is_text: bool, data: bytes) -> None:
        if is_text and not data.isascii():
            try:
                data.decode()  # the sans-I/O layer leaves UTF-8 validation to us
            except UnicodeDecodeError as exc:
                self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
        self._messages_in += 1
        if is_text:
            self._handler.on_text(self, data)
        else:
            self._handler.on_binary(self, data)

    def _fail(self, code: CloseCode, reason: str) -> None:
        """Close for bad input without a closing handshake (websockets' `fail`: the close
        frame, then EOF); whatever else was read is dropped."""
        self._discard_input = True
        self._fragments = bytearray()
        self._protocol.fail(code, reason)
        self._start_close_timer()
        self._flush()

    def _respond(self, request: Request) -> None:
        if self.client_host in self._config.trusted_proxies:
            forwarded = request.headers.get_all("X-Forwarded-For")
            if forwarded:
                self.client_host = forwarded[-1].rpartition(",")[2].strip()
        self._send_response(respond(self._protocol, request, self._config.path, self._http_handler))
        # websockets' parser keeps the request (a local of its suspended generator) for the
        # connection's lifetime; its headers are not needed any more, and they are most of it.
        request.headers.clear()
        if self._protocol.state is OPEN:
            self._opened = True
            self._next_ping = trio.current_time() + self._config.heartbeat_interval
            self._shared.heartbeats.add(self, self._next_heartbeat())
            self._handler.on_open(self)

    def _refuse(self, status: HTTPStatus) -> None:
        self._send_response(refusal(status))

    def _send_response(self, response: Response) -> None:
        self._protocol.send_response(response)
        self._responded = True
        self._flush(bounded=False)

    def _refused_by_protocol(self) -> None:
        """websockets answered the head itself: 414 or 431 for a line too long or too many of
        them, but only EOF for one it cannot parse, or for EOF before the head was complete;
        those get 400 here. (The head is gone by then, so a request with a body, which
        websockets does not parse, gets 400 rather than the 405 of its method.)"""
        self._responded = True  # so `_finish` reads the rest, which keeps the answer from an RST
        if isinstance(self._protocol.handshake_exc, InvalidMessage) and self._bytes_in:
            logger.debug("%r: malformed request head: %r", self, self._protocol.handshake_exc)
            self._write(bad_request(), bounded=False)

    def _next_heartbeat(self) -> float:
        return min(self._next_ping, self._last_received + self._config.heartbeat_timeout)

    def _heartbeat(self, now: float) -> float | None:
        """Ping periodically; close (1011) if the peer sent nothing at all for too long.

        Called by `Heartbeats` when `_next_heartbeat` has come; returns when to call again, or
        None once the connection is no longer open.
        """
        if self._protocol.state is not OPEN:
            return None
        if now >= self._last_received + self._config.heartbeat_timeout:
            logger.info("%r: heartbeat timeout", self)
            self._close_from_server(CloseCode.INTERNAL_ERROR, "heartbeat timeout")
            return None
        if now >= self._next_ping:
            self._protocol.send_ping(b"")
            self._flush()
            self._next_ping = now + self._config.heartbeat_interval
        return self._next_heartbeat()

    async def _finish(self) -> None:
        """Say goodbye within close_timeout, whatever ended the connection; never raises.

        Until the peer's close frame or EOF arrives we keep reading (input discarded): closing
        a socket with unread input sends RST, which can destroy the close frame or HTTP
        response the peer has not read yet.
        """
        self._finishing = True
        if self._writer is not None:  # stop it first: one task at a time sends on a socket
            scope, exited = self._writer
            scope.cancel()
            with trio.CancelScope(shield=True):
                await exited.wait()
        if self._broken:
            return
        if self._protocol.state is OPEN:  # server shutdown or a failure in this connection
            if self._going_away:
                self._close_from_server(CloseCode.GOING_AWAY, "server shutting down")
            else:
                self._close_from_server(CloseCode.INTERNAL_ERROR, "internal error")
        self._discard_input = True
        deadline = min(self._close_deadline, trio.current_time() + self._config.close_timeout)
        with trio.CancelScope(shield=True, deadline=deadline):
            await self._drain()
            if (
                self._responded
                and not (self._broken or self._peer_eof)
                and self._protocol.close_rcvd is None
            ):
                await self._receive_loop()
                await self._drain()

    def _notify_closed(self) -> None:
        if not self._opened:
            return
        proto = self._protocol
        # Report the close frame that started the closing handshake, whoever sent it.
        first: Close | None
        if proto.close_sent is not None and not proto.close_rcvd_then_sent:
            first = proto.close_sent
        else:
            first = proto.close_rcvd
        code, reason = (None, "") if first is None else (int(first.code), first.reason)
        try:
            self._handler.on_close(self, code, reason)
        except Exception:
            logger.exception("%r: on_close failed", self)

    # -- send path -------------------------------------------------------------------------

    def _close_from_server(self, code: int, reason: str) -> None:
        """Start a closing handshake the application did not ask for; ignore further input."""
        self._discard_input = True
        self._protocol.send_close(code, reason)
        self._start_close_timer()
        self._flush()

    def _start_close_timer(self) -> None:
        if self._close_deadline == math.inf:
            self._close_deadline = trio.current_time() + self._config.close_timeout
            self._read_scope.deadline = min(self._read_scope.deadline, self._close_deadline)

    def _flush(self, *, bounded: bool = True) -> None:
        for chunk in self._protocol.data_to_send():
            if chunk:
                self._write(chunk, bounded=bounded)
            else:
                self._want_eof()

    def _write(self, chunk: bytes, *, bounded: bool) -> None:
        if self._eof_pending or self._broken:
            return
        out = self._out
        if (
            bounded
            and len(out) + self._in_flight + len(chunk) > self._data_limit
            and chunk[0] != _CLOSE_FRAME_FIRST_BYTE
        ):
            self._overflow()
            return
        sock = self._sock
        if sock is not None and self._batch.holding:
            out += chunk
            if not self._batched:
                self._batched = True
                self._batch.pending.append(self)
            return
        if sock is not None and not out:
            sent = self._send_now(chunk)
            if sent is None or sent == len(chunk):
                return
            out += memoryview(chunk)[sent:]
        else:
            out += chunk
        self._start_writer()

    def _send_batched(self) -> None:
        """Called when the batch this connection's output waited in ends: one send for all."""
        self._batched = False
        out = self._out
        if not out or self._broken:
            return
        sent = self._send_now(out)
        if sent is None:
            return
        if sent == len(out):
            out.clear()
        else:
            del out[:sent]
            self._start_writer()

    def _send_now(self, data: bytes | bytearray) -> int | None:
        """Write what the kernel takes now: how much, or None if the socket is dead (the
        connection is then aborted)."""
        assert self._sock is not None
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._abort(exc)
            return None
        self._bytes_out += sent
        return sent

    def _overflow(self) -> None:
        # Already closing: the close frame is queued and the close timer runs; just drop.
        if self._protocol.state is OPEN:
            logger.warning("%r: send buffer overflow; closing the slow client", self)
            self._close_from_server(CloseCode.TRY_AGAIN_LATER, "send buffer overflow")

    def _want_eof(self) -> None:
        if not self._responded:
            self._refused_by_protocol()
        self._eof_pending = True
        if self._sock is not None and not self._out:
            self._shutdown_socket()
        else:
            self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None and not self._finishing:
            self._writer = trio.CancelScope(), trio.Event()
            self._shared.nursery.start_soon(self._write_out, *self._writer)

    async def _write_out(self, scope: trio.CancelScope, exited: trio.Event) -> None:
        """The writer task: lives only while there is buffered output, so idle connections
        cost no task. It runs in the shared nursery, so it must not raise."""
        try:
            with scope:
                await self._drain()
        except Exception:
            logger.exception("%r: writer failed; closing it", self)
            self._read_scope.cancel()
        finally:
            self._writer = None
            exited.set()

    async def _drain(self) -> None:
        try:
            await self._drain_or_raise()
        except _TRANSPORT_ERRORS as exc:
            self._abort(exc)

    async def _drain_or_raise(self) -> None:
        sock = self._sock
        while self._out:
            if sock is not None:
                await trio.lowlevel.wait_writable(sock)
                try:
                    sent = sock.send(self._out)
                except BlockingIOError:
                    continue
                del self._out[:sent]
                self._bytes_out += sent
            else:
                chunk, self._out = self._out, bytearray()
                self._in_flight = len(chunk)
                try:
                    await self._stream.send_all(chunk)
                except trio.Cancelled:
                    # Memory streams send all or nothing; put the bytes back so _finish still
                    # delivers them ahead of the close frame. (A stream left half-written by a
                    # cancelled send_all, e.g. TLS, fails the next send and is aborted.)
                    self._out[:0] = chunk
                    raise
                finally:
                    self._in_flight = 0
                self._bytes_out += len(chunk)
        if self._eof_pending and not self._eof_sent:
            if sock is not None:
                self._shutdown_socket()
            elif isinstance(self._stream, trio.abc.HalfCloseableStream):
                await self._stream.send_eof()
                self._eof_sent = True

    def _shutdown_socket(self) -> None:
        assert self._sock is not None
        self._eof_sent = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the peer is already gone; the read side will notice
            logger.debug("%r: shutdown failed: %r", self, exc)

    def _abort(self, exc: BaseException) -> None:
        """The byte stream is dead: drop output, mark the protocol closed, stop the reader."""
        if self._broken:
            return
        logger.debug("%r: transport error: %r", self, exc)
        self._broken = True
        self._discard_input = True
        self._out.clear()
        self._protocol.receive_eof()  # moves the protocol to CLOSED from any state
        self._protocol.data_to_send()
        self._read_scope.cancel()

    def _release_socket(self) -> None:
        if self._sock is not None:
            self._sock.detach()

    def _release_protocol_errors(self) -> None:
        """Drop the tracebacks of the exceptions websockets keeps once the connection is over.

        Each traceback runs through the protocol's parser generator or `accept`, whose frames
        refer to the protocol, which keeps the exception: a reference cycle. (A refused
        request keeps its exception too, and the parser keeps the request.) After a reset, the
        EOF that `_abort` feeds in raises inside our handler of the `OSError`, so that error is
        chained to it, and its traceback's frames refer to this connection: the cycle then
        holds the connection, its sockets and its scopes. Only a full collection would free
        them, and the server makes those rare (`callbox.server.app.GC_THRESHOLDS`).
        """
        chain: list[BaseException | None] = [
            self._protocol.parser_exc,
            self._protocol.handshake_exc,
        ]
        while chain:
            exc = chain.pop()
            if exc is not None and exc.__traceback__ is not None:
                exc.__traceback__ = None
                chain += (exc.__cause__, exc.__context__)


def _receive_into(sock: socket.socket, buffer: memoryview) -> int | None:
    """`sock.recv_into(buffer)`, or None when nothing has arrived: the caller then waits outside
    any exception handler (waiting inside one would keep the exception alive meanwhile)."""
    try:
        return sock.recv_into(buffer)
    except BlockingIOError:
        return None


class SharedServices:
    """What the connections of one server share, so that an idle one costs neither a task nor a
    nursery: the heartbeat task, and the nursery that a connection's writer runs in while its
    client is slow to read; and the slots for reading request heads (`max_handshakes`)."""

    def __init__(self, nursery: trio.Nursery, config: TransportConfig) -> None:
        self.nursery = nursery
        self.heartbeats = Heartbeats()
        self.handshakes = trio.Semaphore(config.max_handshakes)
        nursery.start_soon(self.heartbeats.run)


class Heartbeats:
    """The heartbeats of many connections, from one task: a heap of when each is next due.

    An open connection costs an entry here rather than a task of its own (a task and its
    stack take ~2.5 KB; most of a signaling server's connections are idle). An entry is only
    ever early: a connection that received data since is put back at its new time.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Connection]] = []
        self._wakeup = trio.CancelScope()

    def add(self, conn: Connection, due: float) -> None:
        heapq.heappush(self._heap, (due, conn.id, conn))
        self._wakeup.deadline = min(self._wakeup.deadline, due)

    async def run(self) -> None:
        heap = self._heap
        while True:
            self._wakeup = trio.CancelScope(deadline=heap[0][0] if heap else math.inf)
            with self._wakeup:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, conn = heapq.heappop(heap)
                due = conn._next_heartbeat()
                if due > now:  # data arrived meanwhile, or the entry was early
                    heapq.heappush(heap, (due, conn.id, conn))
                    continue
                try:
                    again = conn._heartbeat(now)
                except Exception:  # a bug: this connection's, not every connection's
                    logger.exception("%r: heartbeat failed; closing it", conn)
                    conn._read_scope.cancel()
                    continue
                if again is not None:
                    heapq.heappush(heap, (again, conn.id, conn))
            await trio.lowlevel.checkpoint()  # let a busy second of pings not starve others


class _OutputBatch:
    """Output held back while one read's messages are handled, then sent with one call each.

    A read often brings several messages for the same peer (a client sends its ICE candidates
    in a burst; a relay under load reads many frames at once). Sent one by one they cost a
    `send` system call each, the biggest part of a small message's relay; held until the read
    is handled, they go in one. What a connection holds counts against its send buffer bound
    as before. Output from anything but a read (timers, heartbeats) is not held.
    """

    __slots__ = ("holding", "pending")

    def __init__(self) -> None:
        self.holding = False
        self.pending: list[Connection] = []

    def release(self) -> None:
        self.holding = False
        pending = self.pending
        for conn in pending:
            conn._send_batched()
        pending.clear()


_OUTPUT_BATCH: trio.lowlevel.RunVar[_OutputBatch] = trio.lowlevel.RunVar("callbox_output_batch")


def _output_batch() -> _OutputBatch:
    """The batch shared by the connections of this trio run (one task handles a read at once)."""
    try:
        return _OUTPUT_BATCH.get()
    except LookupError:
        batch = _OutputBatch()
        _OUTPUT_BATCH.set(batch)
        return batch


_READ_BUFFER: trio.lowlevel.RunVar[memoryview] = trio.lowlevel.RunVar("callbox_read_buffer")


def _shared_read_buffer(size: int) -> memoryview:
    """One buffer that every connection of this trio run reads into, in turn.

    A read used to allocate `read_size` bytes and shrink them to what arrived: under load that
    made the allocator trim and regrow the heap, and the kernel zeroed fresh pages for it
    (~17% of the server's CPU relaying 3 KB messages for 1,000 calls). A buffer per connection
    would cost idle connections 64 KiB each. Sharing is safe because a connection handles what
    it read before it lets another task run.
    """
    try:
        buffer = _READ_BUFFER.get()
    except LookupError:
        buffer = memoryview(b"")
    if len(buffer) < size:
        buffer = memoryview(bytearray(size))
        _READ_BUFFER.set(buffer)
    return buffer


def _peer_of(stream: trio.abc.Stream) -> tuple[str, str]:
    """The peer as logged (``host:port``) and its host alone; "unknown" where there is none."""
    if isinstance(stream, trio.SocketStream):
        try:
            peer = stream.socket.getpeername()
        except OSError:  # already disconnected
            return "unknown", "unknown"
        if isinstance(peer, tuple):
            host, port = peer[0], peer[1]
            return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), host
        return str(peer), str(peer)
    return "unknown", "unknown"


def _accepted(
    stream: trio.abc.Stream,
    handler: ConnectionHandler,
    config: TransportConfig,
    http_handler: HttpHandler | None,
    shared: SharedServices,
) -> Coroutine[None, None, None]:
    """The task serving a new stream: the connection's own `_serve`, with no frame around it."""
    try:
        conn = Connection(stream, handler, config, http_handler, shared)
    except Exception:
        logger.exception("could not set up a connection; dropping it")
        return trio.aclose_forcefully(stream)
    return conn._serve()


async def handle_stream(
    stream: trio.abc.Stream,
    handler: ConnectionHandler,
    config: TransportConfig,
    http_handler: HttpHandler | None = None,
    shared: SharedServices | None = None,
) -> None:
    """Serve one client on any trio Stream; never raises except for cancellation.

    `shared`, when given, must stay open for as long as the stream is served; without, the
    connection gets services of its own.
    """
    if shared is None:
        async with trio.open_nursery() as nursery:
            shared = SharedServices(nursery, config)
            await _accepted(stream, handler, config, http_handler, shared)
            nursery.cancel_scope.cancel()
    else:
        await _accepted(stream, handler, config, http_handler, shared)


async def serve_websockets(
    handler: ConnectionHandler,
    config: TransportConfig,
    host: str,
    port: int,
    *,
    http_handler: HttpHandler | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections until cancelled; cancelling it is the graceful shutdown (1001)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        shared = SharedServices(nursery, config)
        for listener in listeners:
            nursery.start_soon(_accept, listener, handler, config, http_handler, shared)
        task_status.started(listeners)


ACCEPT_RETRY_SECONDS = 0.1
"""How long to wait before accepting again when the process is out of descriptors or memory."""
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def _accept(
    listener: trio.abc.Listener[trio.abc.Stream],
    handler: ConnectionHandler,
    config: TransportConfig,
    http_handler: HttpHandler | None,
    shared: SharedServices,
) -> None:
    """`trio.serve_listeners`' loop, without the wrapping task it gives each connection (whose
    frame every idle connection would keep): the task is the connection's own."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.exception("accept failed; retrying in %g s", ACCEPT_RETRY_SECONDS)
                await trio.sleep(ACCEPT_RETRY_SECONDS)
            else:
                # A constant name: trio would otherwise build a string for every connection.
                shared.nursery.start_soon(
                    _accepted, stream, handler, config, http_handler, shared, name="connection"
                )
