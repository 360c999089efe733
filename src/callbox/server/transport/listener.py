"""Accepting connections: the listening sockets, the accept loop, and what connections share."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Coroutine, Sequence

import trio

from callbox.server.transport.config import TransportConfig
from callbox.server.transport.connection import Connection, ConnectionHandler
from callbox.server.transport.heartbeats import Heartbeats
from callbox.server.transport.http import HttpHandler
from callbox.server.transport.tls import ServerCertificate, TlsConnection

__all__ = ["ACCEPT_RETRY_SECONDS", "SharedServices", "open_listeners", "serve_websockets"]

logger = logging.getLogger("callbox.transport")


class SharedServices:
    """What the connections of one server share, so that an idle one costs neither a task nor a
    nursery: the heartbeat task, and the nursery that a connection's writer runs in while its
    client is slow to read; the slots for reading request heads (`max_handshakes`); and the TLS
    certificate, if the server speaks TLS."""

    def __init__(
        self,
        nursery: trio.Nursery,
        config: TransportConfig,
        certificate: ServerCertificate | None = None,
    ) -> None:
        self.nursery = nursery
        self.heartbeats = Heartbeats()
        self.handshakes = trio.Semaphore(config.max_handshakes)
        self.certificate = certificate
        nursery.start_soon(self.heartbeats.run)


class ListenError(Exception):
    """The server could not open its listening socket: said in one line, not a traceback."""


async def serve_websockets(
    handler: ConnectionHandler,
    config: TransportConfig,
    host: str,
    port: int,
    *,
    http_handler: HttpHandler | None = None,
    certificate: ServerCertificate | None = None,
    sockets: Sequence[socket.socket] = (),
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections until cancelled; cancelling it is the shutdown of last resort (1001:
    the drain, `SignalingServer.drain`, closes the listeners first, which ends accepting).

    It listens on `host` and `port`, or on `sockets` already listening (a worker's, bound by
    its parent: `callbox.server.workers`). With a `certificate`, every connection speaks TLS
    (`wss://`, `https://`), with the context the certificate holds when it is accepted."""
    if sockets:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    else:
        listeners = await open_listeners(host, port)
    async with trio.open_nursery() as nursery:
        shared = SharedServices(nursery, config, certificate)
        for listener in listeners:
            nursery.start_soon(_accept, listener, handler, config, http_handler, shared)
        task_status.started(listeners)


async def open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listening sockets on `host` and `port` (one per address the host resolves to)."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as error:  # a port in use, an address not here, a name that does not resolve
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error


ACCEPT_RETRY_SECONDS = 0.1
"""How long to wait before accepting again when the process is out of descriptors or memory."""
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def _accept(
    listener: trio.abc.Listener[trio.SocketStream],
    handler: ConnectionHandler,
    config: TransportConfig,
    http_handler: HttpHandler | None,
    shared: SharedServices,
) -> None:
    """`trio.serve_listeners`' loop, without the wrapping task it gives each connection (whose
    frame every idle connection would keep): the task is the connection's own. It ends when
    the listener is closed (a drain stops accepting so)."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
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


def _accepted(
    stream: trio.SocketStream,
    handler: ConnectionHandler,
    config: TransportConfig,
    http_handler: HttpHandler | None,
    shared: SharedServices,
) -> Coroutine[None, None, None]:
    """The task serving a new stream: the connection's own `_serve`, with no frame around it."""
    try:
        kind = Connection if shared.certificate is None else TlsConnection
        conn = kind(stream, handler, config, http_handler, shared)
    except Exception:
        logger.exception("could not set up a connection; dropping it")
        return trio.aclose_forcefully(stream)
    return conn._serve()
