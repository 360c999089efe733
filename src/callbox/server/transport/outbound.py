"""The send half of a connection: what the protocol has to send, into the socket, without awaiting.

A frame is written straight to the non-blocking socket; what one read's messages produce for a
connection is held until the read is handled and then goes in one `send` (`_OutputBatch`); what
the kernel will not take waits in a bounded buffer, drained by a writer task that lives only while
there is such output.

The buffer never exceeds `send_buffer_bytes`: data, pings and pongs may fill it up to
`send_buffer_bytes - CLOSE_FRAME_RESERVE_BYTES`; one that does not fit is dropped and the
connection told (`Outbound._overflow`: it closes with 1013, whose close frame uses the reserve).
A partially written frame is never dropped, so the byte stream stays valid.

`Outbound` is the base class of `Connection` rather than an object it holds: the relay calls
`send_text` for every message, and a base class costs that path neither a call nor an attribute
lookup (a held object would, and a reference back from it to the connection would be a cycle that
only the cyclic collector frees).
"""

from __future__ import annotations

import logging
import socket
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import trio
from websockets.server import ServerProtocol

if TYPE_CHECKING:
    from callbox.server.transport.listener import SharedServices

__all__ = ["CLOSE_FRAME_RESERVE_BYTES", "TRANSPORT_ERRORS", "Outbound"]

logger = logging.getLogger("callbox.transport")

#: Bytes of every send buffer kept free for the final close frame (2-byte header + <= 125-byte
#: payload), so a slow client can always be told why it is dropped without exceeding the bound.
CLOSE_FRAME_RESERVE_BYTES = 127
# First byte of an unmasked server close frame (FIN + opcode 0x8); lets the bound exempt it.
_CLOSE_FRAME_FIRST_BYTE = 0x88
#: Errors that mean "the byte stream is gone", as opposed to bugs.
TRANSPORT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class Outbound(ABC):
    """A connection's output: the bound, the per-read batch, the writer task, the half-close.

    Every write goes through `_write`, which never awaits and never raises for transport reasons:
    a dead socket is reported to `_abort`, a full buffer to `_overflow`, both the connection's.
    """

    __slots__ = (
        "_batch",
        "_batched",
        "_broken",
        "_bytes_out",
        "_data_limit",
        "_eof_pending",
        "_eof_sent",
        "_finishing",
        "_out",
        "_sock",
        "_writer",
    )

    # The connection's, set by it: the protocol whose output this sends, the nursery writer
    # tasks run in, and the scope of its reading (stopped if the writer fails).
    _protocol: ServerProtocol
    _shared: SharedServices
    _read_scope: trio.CancelScope

    def __init__(self, sock: socket.socket, send_buffer_bytes: int) -> None:
        # A second socket object on the trio stream's fd, so writes skip trio's layers; detached
        # before trio closes the fd (after that, a stray send fails with EBADF instead of
        # hitting a reused fd).
        self._sock = sock
        self._data_limit = send_buffer_bytes - CLOSE_FRAME_RESERVE_BYTES
        self._out = bytearray()
        self._bytes_out = 0
        self._broken = False  # the byte stream is dead: nothing more is written or read
        self._eof_pending = False  # protocol asked for a half-close; nothing may follow it
        self._eof_sent = False
        self._writer: tuple[trio.CancelScope, trio.Event] | None = None
        self._finishing = False  # no more writer tasks: `_finish` drains inline
        self._batch = _output_batch()
        self._batched = False  # in `_batch.pending`: has output held until the batch ends

    @abstractmethod
    def _overflow(self) -> None:
        """Output was dropped because the buffer was full."""

    @abstractmethod
    def _abort(self, exc: BaseException) -> None:
        """The byte stream is dead (`exc` says how); `_broken` must be set."""

    def _flush(self, *, bounded: bool = True) -> None:
        """Send what the protocol has for the peer; an empty chunk is its request to half-close."""
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
            and len(out) + len(chunk) > self._data_limit
            and chunk[0] != _CLOSE_FRAME_FIRST_BYTE
        ):
            self._overflow()
            return
        if self._batch.holding:
            out += chunk
            if not self._batched:
                self._batched = True
                self._batch.pending.append(self)
            return
        if not out:
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
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._abort(exc)
            return None
        self._bytes_out += sent
        return sent

    def _want_eof(self) -> None:
        self._eof_pending = True
        if not self._out:
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

    async def _stop_writer(self) -> None:
        """Start no more writer tasks, and wait until the running one is gone: from now on the
        caller drains (`_drain`), and one task at a time sends on a socket."""
        self._finishing = True
        if self._writer is not None:
            scope, exited = self._writer
            scope.cancel()
            with trio.CancelScope(shield=True):
                await exited.wait()

    async def _drain(self) -> None:
        """Send everything buffered, then the half-close if one is pending."""
        try:
            await self._drain_or_raise()
        except TRANSPORT_ERRORS as exc:
            self._abort(exc)

    async def _drain_or_raise(self) -> None:
        sock = self._sock
        while self._out:
            await trio.lowlevel.wait_writable(sock)
            try:
                sent = sock.send(self._out)
            except BlockingIOError:
                continue
            del self._out[:sent]
            self._bytes_out += sent
        if self._eof_pending and not self._eof_sent:
            self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        self._eof_sent = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the peer is already gone; the read side will notice
            logger.debug("%r: shutdown failed: %r", self, exc)

    def _release_socket(self) -> None:
        """Give the fd back to the trio stream alone, which closes it."""
        self._sock.detach()


class _OutputBatch:
    """Output held back while one read's messages are handled, then sent with one call each.

    A read often brings several messages for the same peer (a client sends its ICE candidates
    in a burst; a relay under load reads many frames at once). Sent one by one they cost a
    `send` system call each, the biggest part of a small message's relay; held until the read
    is handled, they go in one. What a connection holds counts against its send buffer bound
    as before. Output from anything but a read (timers, heartbeats) is not held.

    Sound only because nothing awaits between `holding = True` and `release()`: the handler's
    callbacks are synchronous (`ConnectionHandler`), so no other task runs meanwhile.
    """

    __slots__ = ("holding", "pending")

    def __init__(self) -> None:
        self.holding = False
        self.pending: list[Outbound] = []

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
