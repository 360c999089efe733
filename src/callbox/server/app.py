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
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio
from attrs import define, field
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
from callbox.core.calls import Call
from callbox.core.sessions import Session
from callbox.core.store import LocalStore, Store, User
from callbox.core.switchboard import Switchboard
from callbox.ice import credentials_refresh_at, ice_servers_for
from callbox.messages import Hello, IceServer
from callbox.server.admin import API_PREFIX, AdminApi
from callbox.server.metrics import CONTENT_TYPE, Metrics
from callbox.server.static import StaticFiles, schema_files
from callbox.server.timers import SessionTimers
from callbox.server.transport.config import TransportConfig
from callbox.server.transport.connection import Connection
from callbox.server.transport.http import HttpRequest, HttpResponse
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


CLOSE_SERVICE_RESTART: Final = 1012
SERVICE_RESTART: Final = "service restart"
DRAIN_TIMEOUT_S: Final = 10.0
"""How long a drain may take, from the signal to the exit: the closing handshakes (each
time-boxed to 5 s by the transport) and, on a node of a cluster, the events the closes make
(each retried for at most 2 s while the store is out of reach). Past it, the server stops."""


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
        self._draining = False
        self._all_closed = trio.Event()
        """Set once a drain has seen the last connection close."""
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
        # The node label of every metric: a cluster's node name (host/number), else the host.
        self.metrics = Metrics(
            switchboard, node=switchboard.node or socket.gethostname(), webhooks=self.webhooks
        )
        self._files = StaticFiles(
            {**load_web_files(), **schema_files()}, switchboard.config.allowed_origins
        )
        token = switchboard.config.admin_token
        self._admin = None if token is None else AdminApi(token, self)

    # ConnectionHandler -------------------------------------------------------------------------

    def on_open(self, conn: Connection) -> None:
        self._opened(conn.id, conn)
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
        self._closed(conn.id)
        log.debug("connection %d closed (%s %s)", conn.id, code, reason)
        self._carry_out(self.switchboard.disconnect(conn.id, trio.current_time()))

    def _opened(self, conn_id: int, conn: Connection) -> None:
        """A connection is open; during a drain it is closed at once (it was accepted before
        the listeners closed, and finished its handshake since)."""
        self._connections[conn_id] = conn
        if self._draining:
            conn.close(CLOSE_SERVICE_RESTART, SERVICE_RESTART)

    def _closed(self, conn_id: int) -> None:
        self._connections.pop(conn_id, None)
        if self._draining and not self._connections:
            self._all_closed.set()

    # Drain ---------------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Close every connection with 1012 (service restart) and return once all are closed:
        their clients resume elsewhere (another node, or this one restarted). The caller has
        closed the listeners first and bounds the wait (`DRAIN_TIMEOUT_S`)."""
        self._draining = True
        for connection in list(self._connections.values()):
            connection.close(CLOSE_SERVICE_RESTART, SERVICE_RESTART)
        if self._connections:
            await self._all_closed.wait()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # HTTP ----------------------------------------------------------------------------------------

    async def http(self, request: HttpRequest) -> HttpResponse | None:
        """Health, metrics, the static files (the demo page with its browser client, and the
        schemas: `callbox.server.static`), and the admin API under `/api/` when it is on
        (`callbox.server.admin`); anything else is 404, or 405 for a method but GET and HEAD."""
        path = request.path
        if path.startswith(API_PREFIX):
            return None if self._admin is None else await self._admin.handle(request)
        if request.method not in ("GET", "HEAD"):
            return None
        return self.resource(path, request)

    def resource(self, path: str, request: HttpRequest) -> HttpResponse | None:
        """A read-only resource at `path` (GET and HEAD)."""
        if path == "/healthz":
            return 200, [("Content-Type", "text/plain")], b"ok\n"
        if path == "/metrics":
            return 200, [("Content-Type", CONTENT_TYPE)], self.metrics.render()
        return self._files.respond(path, request.headers)

    # What the admin API reads and does (`callbox.server.admin.AdminServer`) ------------------

    def core_now(self) -> float:
        return trio.current_time()

    async def apply(self, event: Callable[[], list[Action]]) -> list[Action]:
        """Run `event` and carry out its actions at once, as a connection's event is."""
        actions = event()
        self._carry_out(actions)
        return actions

    async def find_call(self, call_id: str) -> Call | None:
        return self.switchboard.store.call(call_id)

    async def list_calls(self, limit: int) -> list[Call]:
        return self.switchboard.store.listed_calls(limit)

    async def find_user(self, user_id: str) -> tuple[User, list[Session]] | None:
        store = self.switchboard.store
        user = store.user(user_id)
        return None if user is None else (user, store.devices(user_id))

    async def statistics(self) -> dict[str, int]:
        return self.switchboard.statistics()

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


class Parent(Protocol):
    """The parent of a worker process (`callbox.server.workers.ParentLink`): it bound the
    listening sockets, hears when the worker is serving, and relays the pool's metrics."""

    sockets: list[socket.socket]

    async def keep_in_touch(self, metrics: Metrics, drain: trio.Event) -> None:
        """Tell the parent the worker serves, then exchange metrics with it until cancelled;
        set `drain` if the parent is gone."""
        ...


async def serve(
    config: Config,
    *,
    drain: trio.Event | None = None,
    parent: Parent | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the signaling server until cancelled, or until `drain` is set and the drain is over
    (`run_server`); reports its listeners once it is accepting. With `config.redis_url`, it is
    a node of that cluster (callbox.server.cluster); with a `parent`, a worker of a pool.

    With a TLS certificate and key configured, it serves `wss://` and `https://`, and reads them
    again on SIGHUP (so it must then run in the main thread); an unreadable or invalid one stops
    it at start-up with `CertificateError`.

    A process that is only this server should also `tune_garbage_collector()`; `callbox serve`
    does. It is not done here because the collector's settings belong to the whole process.
    """
    if config.redis_url is not None:
        from callbox.server.cluster import serve_on_redis  # noqa: PLC0415 (needs '.[cluster]')

        await serve_on_redis(
            config, config.redis_url, drain=drain, parent=parent, task_status=task_status
        )
        return
    await run_server(
        config,
        lambda nursery: SignalingServer(build_switchboard(config), nursery),
        task_status,
        drain=drain,
        parent=parent,
    )


async def run_server(
    config: Config,
    make_server: Callable[[trio.Nursery], SignalingServer],
    task_status: trio.TaskStatus[list[trio.SocketListener]],
    *,
    drain: trio.Event | None = None,
    parent: Parent | None = None,
) -> None:
    """Run the server `make_server` makes, on listeners for `config`'s host and port (with
    TLS if configured: see `serve`), or on its `parent`'s sockets. Once `drain` is set, it
    stops accepting, closes every connection with 1012 and returns when they are closed (and
    what their closes make is done), or after `DRAIN_TIMEOUT_S`."""
    certificate = None
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        certificate = ServerCertificate(config.tls_cert_file, config.tls_key_file)
    drain = trio.Event() if drain is None else drain
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
                sockets=() if parent is None else parent.sockets,
                task_status=task_status,
            )
        )
        if parent is None:
            secure = "s" if certificate is not None else ""
            for listener in listeners:
                address = url_address(listener)
                # `.ci/run` and the tests find the URL in this line: keep its words.
                log.info("callbox listening on ws%s://%s%s", secure, address, config.path)
                log.info("demo page at http%s://%s/", secure, address)
        else:  # the parent says where the pool listens, once
            nursery.start_soon(parent.keep_in_touch, server.metrics, drain)
        task_status.started(listeners)
        await drain.wait()
        await _drain(server, listeners)
        nursery.cancel_scope.cancel()


async def _drain(server: SignalingServer, listeners: list[trio.SocketListener]) -> None:
    """Stop accepting and close every connection (`SignalingServer.drain`), for at most
    `DRAIN_TIMEOUT_S`."""
    started = trio.current_time()
    log.info(
        "draining: no new connections; closing %d with 1012 (service restart)",
        server.connection_count,
    )
    with trio.move_on_after(DRAIN_TIMEOUT_S) as timer:
        for listener in listeners:
            await listener.aclose()
        await server.drain()
    if timer.cancelled_caught:
        log.warning(
            "drain: %d connections still open after %g s; stopping anyway",
            server.connection_count,
            DRAIN_TIMEOUT_S,
        )
    else:
        log.info("drained in %.2f s", trio.current_time() - started)


def url_address(listener: trio.SocketListener) -> str:
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
