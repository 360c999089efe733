"""The trio shell around the switchboard: it moves bytes, owns tasks and keeps time.

Each transport callback hands the switchboard what happened with `trio.current_time()` (and, where
the core needs it, the Unix time: the core reads no clock) and carries out the actions it returns,
synchronously: a relayed message costs no task switch and no await.

Every call gets its own nursery, inside its own cancel scope. The call's timers (each invitee's ring
timeout, the expiry warning, the duration cap) are tasks in that nursery, so when the call ends for
any reason one `cancel()` stops all of them: nothing has to remember to disarm a timer
(tests/server/test_call_tasks.py ends a call in every way and finds none of its tasks left).
Each timer also has a cancel scope of its own, for the one case the nursery cannot serve: a single
timer stopped while the call goes on (an invitee answers or declines, and its ring timer stops).
The call's participants are not tasks in that nursery: each is a connection, served by the
transport's task for it (docs/decisions/0007-call-tasks.md says why). Session timers (hello,
reconnect grace, ICE refresh) are entries in one heap run by one task (`SessionTimers`): a task
each cost memory for the connection's life (docs/decisions/0005-hardening.md).
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from time import perf_counter
from typing import TYPE_CHECKING, Any

import trio
from attrs import define, field
from websockets.datastructures import Headers
from websockets.typing import Origin

from callbox.auth import authenticate
from callbox.config import Config
from callbox.core.actions import (
    CALL_TIMERS,
    Action,
    CancelTimer,
    Close,
    CloseCall,
    Notify,
    OpenCall,
    Send,
    StartTimer,
    TimerKey,
)
from callbox.core.store import LocalStore, Store
from callbox.core.switchboard import Switchboard
from callbox.ice import credentials_refresh_at, ice_servers_for
from callbox.messages import Hello, IceServer
from callbox.server.metrics import CONTENT_TYPE, Metrics
from callbox.server.static import StaticFiles, schema_files
from callbox.server.timers import SessionTimers
from callbox.server.transport.config import TransportConfig
from callbox.server.transport.connection import Connection
from callbox.server.transport.http import HttpResponse
from callbox.server.transport.listener import serve_websockets
from callbox.server.transport.tls import CertificateError, ServerCertificate

if TYPE_CHECKING:
    from callbox.server.webhooks import Webhooks

log = logging.getLogger("callbox.server")

GC_THRESHOLDS = (1_000, 10, 1_000)
"""The cyclic collector's thresholds while serving (CPython's defaults are 700, 10, 10).

Every relayed message stays in its recipient's replay buffer for a few hundred messages, so it
outlives the young generations and is promoted into the old one. With the defaults, full
collections then come every few seconds under load and traverse every message held: ~10% of
the CPU at 1,000 calls, in pauses of ~100 ms. Considering a full collection 100 times less often
makes it rare (minutes apart under load, and CPython still waits until a quarter of the old
generation is new); young collections stay small, so their pauses stay under a millisecond.
Garbage cycles wait longer for collection, which costs memory, not correctness; so an ended
connection must leave none (tests/server/test_transport_limits.py). Measured in docs/benchmarks.md.
"""


def tune_garbage_collector() -> None:
    """Sets `GC_THRESHOLDS` for the process (see there why)."""
    gc.set_threshold(*GC_THRESHOLDS)


CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    # callbox.d.ts: the type Deno and TypeScript tooling take for a declaration file by URL.
    ".ts": "application/typescript; charset=utf-8",
}


def load_web_files() -> dict[str, tuple[str, bytes]]:
    """The demo page and the browser client with its type declarations, by URL path, read
    once at start-up."""
    web = files("callbox") / "web"
    pages: dict[str, tuple[str, bytes]] = {}
    if web.is_dir():
        for item in web.iterdir():
            content_type = CONTENT_TYPES.get("." + item.name.rpartition(".")[2])
            if item.is_file() and content_type is not None:
                pages["/" + item.name] = (content_type, item.read_bytes())
    if "/index.html" in pages:
        pages["/"] = pages["/index.html"]
    return pages


@define(eq=False)
class CallTasks:
    """A call's nursery and the timers running in it."""

    cancel_scope: trio.CancelScope = field(factory=trio.CancelScope)
    """Cancelled when the call ends: it takes the nursery and every timer in it."""
    nursery: trio.Nursery | None = None
    pending: list[tuple[Callable[..., Awaitable[None]], tuple[Any, ...], str]] = field(factory=list)
    """Tasks asked for before the call's task has opened its nursery (a `StartTimer` in the same
    batch of actions as the `OpenCall`), with their names."""
    timers: dict[TimerKey, trio.CancelScope] = field(factory=dict)
    """Each running timer's own scope, to stop that timer alone while the call goes on."""

    def start_soon(self, task: Callable[..., Awaitable[None]], *args: Any, name: str) -> None:
        if self.nursery is None:
            self.pending.append((task, args, name))
        else:
            self.nursery.start_soon(task, *args, name=name)


class SignalingServer:
    """Connects the transport's callbacks to the switchboard and runs the timers it asks for."""

    def __init__(self, switchboard: Switchboard, nursery: trio.Nursery) -> None:
        self.switchboard = switchboard
        self._nursery = nursery
        self._connections: dict[int, Connection] = {}
        self._calls: dict[str, CallTasks] = {}
        self._session_timers = SessionTimers(self._timer_fired)
        nursery.start_soon(self._session_timers.run, name="session timers")
        config = switchboard.config
        self.webhooks: Webhooks | None = None
        """The delivery of the core's `Notify` actions, if a webhook is configured."""
        if config.webhook_urls and config.webhook_secret is not None:
            # Imported here: a server with no webhook loads neither it nor its libraries.
            from callbox.server.webhooks import Webhooks  # noqa: PLC0415

            self.webhooks = Webhooks(config.webhook_urls, config.webhook_secret)
            nursery.start_soon(self.webhooks.run, name="webhooks")
        # The node label of every metric: this host, until worker processes name their nodes.
        self.metrics = Metrics(switchboard, node=socket.gethostname(), webhooks=self.webhooks)
        self._files = StaticFiles(
            {**load_web_files(), **schema_files()}, switchboard.config.allowed_origins
        )

    # ConnectionHandler -------------------------------------------------------------------------

    def on_open(self, conn: Connection) -> None:
        self._connections[conn.id] = conn
        log.debug("connection %d open from %s", conn.id, conn.remote)
        self._carry_out(self.switchboard.connect(conn.id, trio.current_time(), conn.client_host))

    def on_text(self, conn: Connection, data: bytes) -> None:
        started = perf_counter()
        # The time the data was read: the transport has just taken it, so no trio clock read here.
        self._carry_out(self.switchboard.receive(conn.id, data, conn.last_received, time.time()))
        self.metrics.message_seconds.observe(perf_counter() - started)

    def _write(self, send: Send) -> None:
        connection = self._connections.get(send.conn)
        if connection is not None:
            connection.send_text(send.frame)

    def on_binary(self, conn: Connection, data: bytes) -> None:
        self._carry_out(self.switchboard.receive_binary(conn.id, trio.current_time()))

    def on_close(self, conn: Connection, code: int | None, reason: str) -> None:
        self._connections.pop(conn.id, None)
        log.debug("connection %d closed (%s %s)", conn.id, code, reason)
        self._carry_out(self.switchboard.disconnect(conn.id, trio.current_time()))

    # HTTP ----------------------------------------------------------------------------------------

    def http(self, path: str, headers: Headers) -> HttpResponse | None:
        """Health, metrics, and the static files: the demo page with its browser client, and
        the schemas (`callbox.server.static`); anything else is 404."""
        if path == "/healthz":
            return 200, [("Content-Type", "text/plain")], b"ok\n"
        if path == "/metrics":
            return 200, [("Content-Type", CONTENT_TYPE)], self.metrics.render()
        return self._files.respond(path, headers)

    # Actions -------------------------------------------------------------------------------------

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send():
                    self._write(action)
                case Close(conn, code, reason):
                    connection = self._connections.get(conn)
                    if connection is not None:
                        connection.close(code, reason)
                case OpenCall(call_id):
                    tasks = CallTasks()
                    self._calls[call_id] = tasks
                    self._nursery.start_soon(self._supervise_call, tasks, name=f"call {call_id}")
                case CloseCall(call_id, reason):
                    self.metrics.calls_ended[reason] += 1
                    closed = self._calls.pop(call_id, None)
                    if closed is not None:
                        closed.cancel_scope.cancel()
                case StartTimer(key, deadline):
                    self._start_timer(key, deadline)
                case CancelTimer(key):
                    self._cancel_timer(key)
                case Notify():
                    if self.webhooks is not None:
                        self.webhooks.notify(action)

    def _start_timer(self, key: TimerKey, deadline: float) -> None:
        """Runs a call's timer as a task in the call's nursery; a session's in `SessionTimers`."""
        if not isinstance(key, CALL_TIMERS):
            self._session_timers.start(key, deadline)
            return
        tasks = self._calls.get(key.call_id)
        if tasks is None:  # the call has already ended
            return
        previous = tasks.timers.pop(key, None)
        if previous is not None:
            previous.cancel()
        scope = tasks.timers[key] = trio.CancelScope()
        tasks.start_soon(self._run_timer, key, deadline, scope, tasks.timers, name=f"timer {key!r}")

    def _cancel_timer(self, key: TimerKey) -> None:
        if not isinstance(key, CALL_TIMERS):
            self._session_timers.cancel(key)
            return
        tasks = self._calls.get(key.call_id)
        scope = None if tasks is None else tasks.timers.pop(key, None)
        if scope is not None:
            scope.cancel()

    async def _supervise_call(self, tasks: CallTasks) -> None:
        """The call's nursery: lives until the call ends, and takes its timers with it."""
        with tasks.cancel_scope:
            async with trio.open_nursery() as nursery:
                tasks.nursery = nursery
                for task, args, name in tasks.pending:
                    nursery.start_soon(task, *args, name=name)
                tasks.pending.clear()
                await trio.sleep_forever()

    async def _run_timer(
        self,
        key: TimerKey,
        deadline: float,
        scope: trio.CancelScope,
        owner: dict[TimerKey, trio.CancelScope],
    ) -> None:
        with scope:
            await trio.sleep_until(deadline)
        if scope.cancelled_caught:
            return
        if owner.get(key) is scope:
            del owner[key]
        self._timer_fired(key)

    def _timer_fired(self, key: TimerKey) -> None:
        self._carry_out(self.switchboard.timer_fired(key, trio.current_time(), time.time()))


def build_switchboard(
    config: Config, store: Store | None = None, node: str | None = None
) -> Switchboard:
    """The switchboard with real authentication and ICE servers, which read the wall clock;
    a cluster node's runs on its own `store` and names its `node` in `welcome`."""

    def authenticate_hello(hello: Hello) -> str:
        return authenticate(hello, config, now=time.time())

    def ice_servers(user_id: str) -> list[IceServer]:
        return ice_servers_for(config, user_id, now=time.time())

    def ice_refresh_in() -> float | None:
        now = time.time()
        refresh_at = credentials_refresh_at(config, now=now)
        return None if refresh_at is None else max(0.0, refresh_at - now)

    return Switchboard(
        config=config,
        authenticate=authenticate_hello,
        ice_servers=ice_servers,
        ice_refresh_in=ice_refresh_in,
        store=LocalStore() if store is None else store,
        node=node,
    )


def transport_config(config: Config) -> TransportConfig:
    heartbeat = config.heartbeat_ms / 1000
    return TransportConfig(
        path=config.path,
        max_message_bytes=config.max_message_bytes,
        send_buffer_bytes=config.send_buffer_bytes,
        heartbeat_interval=heartbeat,
        heartbeat_timeout=2 * heartbeat,
        trusted_proxies=frozenset(config.trusted_proxies),
        # Listed origins, and none (a client that is not a browser); no list: any.
        origins=(None, *map(Origin, config.allowed_origins)) if config.allowed_origins else None,
    )


async def serve(
    config: Config,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the signaling server until cancelled; reports its listeners once it is accepting.
    With `config.redis_url`, it is a node of that cluster (callbox.server.cluster).

    With a TLS certificate and key configured, it serves `wss://` and `https://`, and reads them
    again on SIGHUP (so it must then run in the main thread); an unreadable or invalid one stops
    it at start-up with `CertificateError`.

    A process that is only this server should also `tune_garbage_collector()`; `callbox serve`
    does. It is not done here because the collector's settings belong to the whole process.
    """
    if config.redis_url is not None:
        from callbox.server.cluster import serve_on_redis  # noqa: PLC0415 (needs '.[cluster]')

        await serve_on_redis(config, config.redis_url, task_status=task_status)
        return
    await run_server(
        config, lambda nursery: SignalingServer(build_switchboard(config), nursery), task_status
    )


async def run_server(
    config: Config,
    make_server: Callable[[trio.Nursery], SignalingServer],
    task_status: trio.TaskStatus[list[trio.SocketListener]],
) -> None:
    """Run the server `make_server` makes, on listeners for `config`'s host and port (with
    TLS if configured: see `serve`)."""
    certificate = None
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        certificate = ServerCertificate(config.tls_cert_file, config.tls_key_file)
    async with trio.open_nursery() as nursery:
        if certificate is not None:
            await nursery.start(_reload_on_hangup, certificate)
        server = make_server(nursery)
        listeners: list[trio.SocketListener] = await nursery.start(
            lambda task_status: serve_websockets(
                server,
                transport_config(config),
                config.host,
                config.port,
                http_handler=server.http,
                certificate=certificate,
                task_status=task_status,
            )
        )
        secure = "s" if certificate is not None else ""
        for listener in listeners:
            address = _url_address(listener)
            # `.ci/run` and the tests find the URL in this line: keep its words.
            log.info("callbox listening on ws%s://%s%s", secure, address, config.path)
            log.info("demo page at http%s://%s/", secure, address)
        task_status.started(listeners)


def _url_address(listener: trio.SocketListener) -> str:
    """The listener's host and port as a URL writes them (an IPv6 address in brackets)."""
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _reload_on_hangup(
    certificate: ServerCertificate, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Read the certificate and key again on each SIGHUP: a renewed certificate is served to
    new connections without a restart (open ones keep theirs). A failed reload keeps the
    current certificate and says why."""
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        task_status.started()
        async for _ in hangups:
            try:
                certificate.reload()
            except CertificateError as error:
                # One line: the error says what and why; a traceback would add nothing.
                log.error("SIGHUP: %s; still serving the previous certificate", error)  # noqa: TRY400
            else:
                log.info("SIGHUP: reloaded the TLS certificate %s", certificate.cert_file)
