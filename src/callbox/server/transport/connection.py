"""A WebSocket connection: one trio task driving websockets' sans-I/O protocol over a socket.

The task reads a large chunk, feeds `ServerProtocol`, and calls the application synchronously
(`ConnectionHandler`); what the application sends goes out without awaiting (`Outbound`, the
connection's base class). It answers the request head (`http.respond`), reassembles fragments,
checks UTF-8, takes turns with other connections on large reads, and runs the closing handshake.

Shutdown: cancel the scope that runs `serve_websockets`. Each connection task then, in a
shielded scope time-boxed by `close_timeout`, sends close 1001 "server shutting down",
flushes what it can and reads (discarding) until the peer's close frame or EOF, then drops TCP.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio
from websockets.exceptions import InvalidMessage
from websockets.frames import BINARY, CONT, TEXT, Close, CloseCode, Frame
from websockets.http11 import Request, Response
from websockets.protocol import CLOSED, CONNECTING, OPEN, Event
from websockets.server import ServerProtocol

from callbox.server.transport.config import TransportConfig
from callbox.server.transport.http import HttpHandler, bad_request, refusal, respond
from callbox.server.transport.outbound import TRANSPORT_ERRORS, Outbound

if TYPE_CHECKING:
    from callbox.server.transport.listener import SharedServices

__all__ = ["Connection", "ConnectionHandler", "ConnectionStatistics", "Source"]

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

#: A close reason must fit in a 125-byte control frame payload next to the 2-byte code.
MAX_CLOSE_REASON_BYTES = 123

_connection_ids = itertools.count(1)


@attrs.frozen
class ConnectionStatistics:
    """Snapshot of one connection's counters (bytes are the WebSocket stream's, before TLS if any;
    messages are data messages)."""

    buffered_bytes: int
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int


class ConnectionHandler(Protocol):
    """Application callbacks; synchronous so the transport never hops tasks per message.

    They must not await in any way (no checkpoint): the output of a read is held in a batch
    shared by every connection until the read is handled (`outbound._OutputBatch`).
    """

    def on_open(self, conn: Connection) -> None: ...
    def on_text(self, conn: Connection, data: bytes) -> None: ...
    def on_binary(self, conn: Connection, data: bytes) -> None: ...
    def on_close(self, conn: Connection, code: int | None, reason: str) -> None: ...


class Connection(Outbound):
    """One accepted WebSocket.

    `send_text` and `close` are synchronous and never raise for transport reasons: a relay
    calls them for many peers from one task and must not be blocked or broken by any of them.
    """

    # Slots (with `Outbound`'s): an idle connection is mostly this object, and a server holds
    # thousands of them.
    __slots__ = (
        "_bytes_in",
        "_close_deadline",
        "_config",
        "_discard_input",
        "_fragment_count",
        "_fragments",
        "_fragments_are_text",
        "_going_away",
        "_handler",
        "_http_handler",
        "_last_received",
        "_messages_in",
        "_messages_out",
        "_next_ping",
        "_opened",
        "_peer_eof",
        "_protocol",
        "_read_scope",
        "_responded",
        "_shared",
        "_stream",
        "client_host",
        "id",
        "remote",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
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
        self._protocol = ServerProtocol(
            origins=config.origins, max_size=config.max_message_bytes, logger=_protocol_logger
        )
        # Reads and writes go to a second socket object on the same fd, past trio's layers.
        sock = socket.socket(fileno=stream.socket.fileno())
        sock.setblocking(False)
        super().__init__(sock, config.send_buffer_bytes)
        self._shared = shared
        self._read_scope = trio.CancelScope()
        self._close_deadline = math.inf
        self._last_received = trio.current_time()
        self._opened = False
        self._responded = False
        self._peer_eof = False
        self._discard_input = False
        self._going_away = False
        self._fragments = bytearray()  # of the message being received, joined as they come
        self._fragment_count = 0
        self._fragments_are_text = False
        self._messages_in = 0
        self._messages_out = 0
        self._bytes_in = 0
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
        """Queue one text message without awaiting (the package docstring says why)."""
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
            buffered_bytes=len(self._out),
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
                        data = await self._receive_head(min(room, config.read_size))
                    except TRANSPORT_ERRORS as exc:
                        self._abort(exc)
                        break
                    if not data:
                        self._received_eof()
                        break
                    await self._head_received(data)
        if timer.cancelled_caught:
            if waiting:
                self._refuse(HTTPStatus.SERVICE_UNAVAILABLE)
            elif self._bytes_in:
                self._refuse(HTTPStatus.REQUEST_TIMEOUT)
        return proto.state is OPEN

    async def _receive_head(self, max_bytes: int) -> bytes:
        """Bytes of the request head as they arrive; empty at EOF. (`TlsConnection` runs the TLS
        handshake first and decrypts.)"""
        return await self._stream.receive_some(max_bytes)

    def _input(self) -> Source:
        """What `_receive_loop` reads from: the socket (`TlsConnection`: its decrypting side)."""
        return self._sock

    async def _receive_loop(self) -> None:
        """Read, feed the protocol, call the handler; until EOF or the closing handshake is
        complete (both close frames seen: the peer may send nothing more, so no need to wait
        for its EOF - trio-websocket clients, for one, never close TCP themselves)."""
        read_size = self._config.read_size
        sock = self._input()
        read_buffer = _shared_read_buffer(read_size)
        while True:
            try:
                # `SocketStream.receive_some` on the raw socket, with fewer layers: less CPU
                # per read, and a smaller stack kept by every idle connection waiting here.
                # Cancelled before reading, never after; unlike `receive_some` it returns
                # without the checkpoint that lets other tasks run, because the buffer is
                # shared by every connection: the data is handled first.
                await trio.lowlevel.checkpoint_if_cancelled()
                while (received := _receive_into(sock, read_buffer)) is None:
                    await trio.lowlevel.wait_readable(sock)
                data = read_buffer[:received]
            except TRANSPORT_ERRORS as exc:
                self._abort(exc)
                return
            if self._broken:  # a send from another task found the socket dead meanwhile
                return
            if not data:
                self._received_eof()
                return
            if len(data) > self._config.feed_size:
                if await self._received_in_turns(data):
                    return
            elif self._received(data):
                return
            del data  # done with the shared buffer (an idle connection must keep no view of it)
            await trio.lowlevel.cancel_shielded_checkpoint()  # now let others run

    async def _received_in_turns(self, data: memoryview) -> bool:
        """Parse a large read (in the shared read buffer) `feed_size` bytes at a time, and let
        other tasks run whenever `frames_per_turn` frames were handled since they last did;
        whether reading is over. What is left of the read is copied out of the shared buffer
        before the first wait: the buffer is another connection's meanwhile. A read of a few
        large frames takes no turn, so its output still goes in one batch (a turn per slice,
        with a send call for every peer each, cut the relay of 3 KB messages by more than
        half)."""
        feed_size, most = self._config.feed_size, self._config.frames_per_turn
        shared = True
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

    async def _head_received(self, data: bytes) -> None:
        """Handle a read of the handshake: once the head is complete, answer it (the handler
        may await), then handle what followed it in the same read (frames a client sent right
        behind its upgrade request). The reads after the handshake go to `_received`, which
        never awaits."""
        self._note_read(len(data))
        proto = self._protocol
        proto.receive_data(data)
        events = proto.events_received()
        head = events[0] if events else None
        if isinstance(head, Request):  # ServerProtocol never emits a Response
            del events[0]
            await self._respond(head)
        batch = self._batch
        batch.holding = True
        try:
            self._handle(events)  # flushes first: a head websockets refused itself, answered
        finally:
            batch.release()

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
        if not isinstance(event, Frame):  # the request head: `_head_received` answered it
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

    async def _respond(self, request: Request) -> None:
        if self.client_host in self._config.trusted_proxies:
            forwarded = request.headers.get_all("X-Forwarded-For")
            if forwarded:
                self.client_host = forwarded[-1].rpartition(",")[2].strip()
        response = await respond(
            self._protocol, request, self._config.path, self._http_handler, self.client_host
        )
        self._send_response(response)
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
        await self._stop_writer()
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

    # -- closing, and what the send half reports -----------------------------------------

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

    def _overflow(self) -> None:
        # Already closing: the close frame is queued and the close timer runs; just drop.
        if self._protocol.state is OPEN:
            logger.warning("%r: send buffer overflow; closing the slow client", self)
            self._close_from_server(CloseCode.TRY_AGAIN_LATER, "send buffer overflow")

    def _want_eof(self) -> None:
        if not self._responded:
            self._refused_by_protocol()
        super()._want_eof()

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

    def _release_protocol_errors(self) -> None:
        """Drop the tracebacks of the exceptions websockets keeps once the connection is over.

        Each traceback runs through the protocol's parser generator or `accept`, whose frames
        refer to the protocol, which keeps the exception: a reference cycle. (A refused
        request keeps its exception too, and the parser keeps the request.) After a reset, the
        EOF that `_abort` feeds in raises inside our handler of the `OSError`, so that error is
        chained to it, and its traceback's frames refer to this connection: the cycle then
        holds the connection, its sockets and its scopes. Only a full collection would free
        them, and the server makes those rare (`callbox.server.app.GC_THRESHOLDS`).

        The whole chain is walked, past exceptions that have no traceback: an EOF or a reset
        before the request head is complete leaves `handshake_exc` an `InvalidMessage` that was
        made, not raised, whose cause is the EOF raised in our handler (seen with a TLS
        handshake cut short, `test_tls.py`, and with a plain head cut by a reset).
        """
        chain: list[BaseException | None] = [
            self._protocol.parser_exc,
            self._protocol.handshake_exc,
        ]
        seen: set[int] = set()
        while chain:
            exc = chain.pop()
            if exc is not None and id(exc) not in seen:
                seen.add(id(exc))
                exc.__traceback__ = None
                chain += (exc.__cause__, exc.__context__)


class Source(Protocol):
    """What the read loop reads from: a non-blocking socket, or what looks like one (its
    `recv_into` raises `BlockingIOError` when nothing has arrived, returns 0 at EOF)."""

    def recv_into(self, buffer: memoryview, /) -> int: ...
    def fileno(self) -> int: ...


def _receive_into(sock: Source, buffer: memoryview) -> int | None:
    """`sock.recv_into(buffer)`, or None when nothing has arrived: the caller then waits outside
    any exception handler (waiting inside one would keep the exception alive meanwhile)."""
    try:
        return sock.recv_into(buffer)
    except BlockingIOError:
        return None


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


def _peer_of(stream: trio.SocketStream) -> tuple[str, str]:
    """The peer as logged (``host:port``) and its host alone; "unknown" if it is gone already."""
    try:
        peer = stream.socket.getpeername()
    except OSError:  # already disconnected
        return "unknown", "unknown"
    if isinstance(peer, tuple):
        host, port = peer[0], peer[1]
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), host
    return str(peer), str(peer)
