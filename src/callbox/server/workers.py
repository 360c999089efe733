"""`callbox serve --workers N`: a parent that binds the port once, and N worker processes that
accept on it, each a node of the cluster (docs/decisions/0017-workers.md).

The parent is small and does no signaling. It opens the listening sockets, starts each worker as
``python -m callbox serve --parent-fd FD --listen-fds FD,...`` with the sockets and one end of a
socket pair passed down (`subprocess`'s ``pass_fds``, as hypercorn and uvicorn hand theirs), and
then supervises:

- **Start-up.** It logs ``callbox listening on ws://...`` once, when every worker has said it
  serves, with the port it bound (so ``--port 0`` still tells its real port). A worker that exits
  before that (Redis out of reach, a certificate it cannot load) stops the pool with its status.
- **Crashes.** A worker that exits on its own, or is killed for having said nothing for
  `SILENT_FOR_S` (hung, or stopped), is started again after `FIRST_RESTART_DELAY_S`,
  doubled at each crash in a row up to `MAX_RESTART_DELAY_S` (back to the first once a worker
  has served for `HEALTHY_AFTER_S`). The log line names the old and the new process ids.
- **Signals.** SIGTERM and SIGINT are passed to every worker, which drains (1012 to its clients,
  then exit 0); a second one is passed too, and stops them at once. The parent closes its copy
  of the listening sockets then, as each worker does at the start of its drain, so the port
  refuses new clients at once. SIGHUP is passed on when
  there is a TLS certificate to read again. The parent exits 0 once every worker has drained,
  and kills those still there `STOP_MARGIN_S` after their drain should have ended.
- **Metrics.** A scrape of the shared port reaches one worker; each worker sends the parent its
  exposition every `METRICS_SHARE_S` and gets the others' latest in reply, so that any worker's
  `/metrics` carries the whole pool, each sample with its node's label (`Metrics.others`).

Workers run in their own process group: Ctrl-C in a terminal reaches the parent alone, which
passes it on once. Under systemd, `KillMode=mixed` does the same for SIGTERM. A worker whose
parent is gone (its end of the pair reads EOF) drains and exits.
"""

from __future__ import annotations

import logging
import signal
import socket
import struct
import subprocess
from collections.abc import Mapping
from typing import Final

import attrs
import orjson
import trio

from callbox.config import Config
from callbox.server.app import DRAIN_TIMEOUT_S, url_address
from callbox.server.metrics import Metrics
from callbox.server.transport.listener import open_listeners

log = logging.getLogger("callbox.workers")

FIRST_RESTART_DELAY_S: Final = 0.5
"""How long after a crash a worker is started again; doubled at each quick crash in a row."""
MAX_RESTART_DELAY_S: Final = 10.0
"""A crashed worker is started again within this long, however often it crashed before."""
HEALTHY_AFTER_S: Final = 30.0
"""A worker that served this long before it crashed is restarted after the first delay again."""
STOP_MARGIN_S: Final = 5.0
"""How long after `DRAIN_TIMEOUT_S` the parent waits for a worker before it kills it."""
SILENT_FOR_S: Final = 15.0
"""A serving worker that has sent nothing for this long is hung (its event loop blocked, or the
process stopped): the parent kills it, and starts another. Three times the lease (`LEASE_S`):
the cluster has taken its sessions over long before."""
METRICS_SHARE_S: Final = 2.0
"""How often a worker sends its exposition to the parent (and how stale the others' may be,
twice over, in its scrape)."""
MAX_LINK_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""The largest message between a worker and its parent: the pool's expositions, ~20 KB each."""
_LENGTH = struct.Struct(">I")


# The link between a worker and its parent: length-prefixed JSON objects over a socket pair ------


class LinkBroken(Exception):
    """The other end sent something that is not a message of the link."""


async def _send(stream: trio.SocketStream, message: Mapping[str, object]) -> None:
    payload = orjson.dumps(message)
    await stream.send_all(_LENGTH.pack(len(payload)) + payload)


class _Reader:
    """Reads the link's messages from `stream`, one at a time; None at EOF."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def receive(self) -> dict[str, object] | None:
        while True:
            if len(self._buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(self._buffer)
                if length > MAX_LINK_MESSAGE_BYTES:
                    raise LinkBroken(f"a message of {length} bytes")
                end = _LENGTH.size + length
                if len(self._buffer) >= end:
                    payload = bytes(self._buffer[_LENGTH.size : end])
                    del self._buffer[:end]
                    try:
                        message = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        raise LinkBroken(f"not JSON: {payload[:60]!r}") from None
                    if not isinstance(message, dict):
                        raise LinkBroken(f"not an object: {payload[:60]!r}")
                    return message
            chunk = await self._stream.receive_some()
            if not chunk:
                if self._buffer:
                    raise LinkBroken("EOF in the middle of a message")
                return None
            self._buffer += chunk


# The worker's side ------------------------------------------------------------------------------


@attrs.define(eq=False)
class ParentLink:
    """A worker's link to its parent (`callbox.server.app.Parent`): the sockets it listens on,
    and the socket pair's end it reports on."""

    sockets: list[socket.socket]
    link: socket.socket

    @classmethod
    def inherited(cls, parent_fd: int, listen_fds: list[int]) -> ParentLink:
        """From the descriptors the parent passed down (`--parent-fd`, `--listen-fds`)."""
        sockets = [socket.socket(fileno=fd) for fd in listen_fds]
        return cls(sockets, socket.socket(fileno=parent_fd))

    async def keep_in_touch(self, metrics: Metrics, drain: trio.Event) -> None:
        """Say the worker serves; then send its exposition every `METRICS_SHARE_S` and keep the
        others' the parent sends back, until cancelled. The parent gone (EOF): drain."""
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(self.link))
        reader = _Reader(stream)
        async with trio.open_nursery() as nursery:
            try:
                await _send(stream, {"ready": metrics.node})
                nursery.start_soon(self._share, stream, metrics)
                while (message := await reader.receive()) is not None:
                    others = message.get("others")
                    if isinstance(others, dict):
                        metrics.others = {str(k): str(v) for k, v in others.items()}
            except (trio.BrokenResourceError, LinkBroken) as broken:
                log.warning("the link to the parent broke: %s", broken)
            log.warning("the parent process is gone: draining")
            drain.set()
            nursery.cancel_scope.cancel()

    async def _share(self, stream: trio.SocketStream, metrics: Metrics) -> None:
        while True:
            await trio.sleep(METRICS_SHARE_S)
            try:
                await _send(stream, {"metrics": metrics.render_own().decode()})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the reader sees the EOF and drains


# The parent -------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Worker:
    """One worker slot: the process in it now, and what it last said."""

    index: int
    process: trio.Process
    link: trio.SocketStream
    started_at: float
    ready: trio.Event = attrs.field(factory=trio.Event)
    node: str = ""
    exposition: str = ""


@attrs.define(eq=False)
class Pool:
    """The parent of `count` workers (see the module's docstring)."""

    config: Config
    count: int
    command: list[str]
    """The worker's command line, less its descriptors."""
    env: dict[str, str]
    listeners: list[trio.SocketListener]
    workers: dict[int, Worker] = attrs.field(factory=dict)
    stopping: bool = False
    stop_signal: int = signal.SIGTERM
    failed: int | None = None
    """The exit status of a worker that could not start: the pool's own."""
    all_ready: trio.Event = attrs.field(factory=trio.Event)
    statuses: dict[int, int] = attrs.field(factory=dict)
    """Each slot's last exit status, once stopping."""
    spawning: trio.Lock = attrs.field(factory=trio.Lock)
    """Held while a worker is started (its descriptors are passed down), so that the listeners
    are not closed under it."""

    async def run(self) -> int:
        """Start the workers and supervise them until they have all drained; the exit status."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._take_signals, nursery)
            async with trio.open_nursery() as supervisors:
                for index in range(self.count):
                    supervisors.start_soon(self._supervise, index)
                await self.all_ready.wait()
                if not self.stopping:
                    self._say_where()
            nursery.cancel_scope.cancel()  # every slot is done: no more signals to pass on
        await self._close_listeners()
        if self.failed is not None:
            return self.failed
        unclean = {index: status for index, status in self.statuses.items() if status != 0}
        if unclean:
            log.warning("workers that did not drain cleanly (exit status): %s", unclean)
            return 1
        log.info("every worker drained; exiting")
        return 0

    def _say_where(self) -> None:
        secure = "s" if self.config.tls_cert_file is not None else ""
        for listener in self.listeners:
            address = url_address(listener)
            # `.ci/run` and the tests find the URL in this line: keep its words.
            log.info("callbox listening on ws%s://%s%s", secure, address, self.config.path)
            log.info("demo page at http%s://%s/", secure, address)
        log.info("%d workers serving", self.count)

    async def _take_signals(
        self,
        nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    if self.config.tls_cert_file is None:
                        log.info("SIGHUP: no TLS certificate to read again")
                    else:
                        log.info("SIGHUP: passed on to the workers")
                        self._signal_all(signum)
                    continue
                if self.stopping:
                    log.info("%s received again: the workers stop at once", name)
                else:
                    log.info("%s received: the workers drain", name)
                    self.stopping = True
                    self.stop_signal = signum
                    nursery.start_soon(self._close_listeners)
                    nursery.start_soon(self._kill_stragglers)
                self.all_ready.set()  # a stop during start-up: nothing more to wait for
                self._signal_all(signum)

    def _hung(self, worker: Worker) -> None:
        """`worker` serves but has said nothing for `SILENT_FOR_S`: kill it (its supervisor
        starts another)."""
        if worker.process.returncode is None and not self.stopping:
            log.error(
                "worker %d (pid %d, node %s) silent for %g s: hung; killing it",
                worker.index,
                worker.process.pid,
                worker.node,
                SILENT_FOR_S,
            )
            worker.process.kill()

    async def _close_listeners(self) -> None:
        """Close the parent's copy of the listening sockets (idempotent). Each worker closes its
        own as its drain starts; once all are closed the port is, and new clients are refused
        (so they try their next URL) rather than left waiting in a queue nobody accepts from."""
        async with self.spawning:
            for listener in self.listeners:
                await listener.aclose()

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers.values():
            if worker.process.returncode is None:
                worker.process.send_signal(signum)

    async def _kill_stragglers(self) -> None:
        await trio.sleep(DRAIN_TIMEOUT_S + STOP_MARGIN_S)
        for worker in self.workers.values():
            if worker.process.returncode is None:
                log.warning(
                    "worker %d (pid %d) has not drained in %g s: killing it",
                    worker.index,
                    worker.process.pid,
                    DRAIN_TIMEOUT_S + STOP_MARGIN_S,
                )
                worker.process.kill()

    async def _supervise(self, index: int) -> None:
        """Run slot `index`'s worker, and start it again each time it exits on its own."""
        quick_crashes = 0
        worker = await self._start(index)
        while worker is not None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen, worker)
                status = await worker.process.wait()
                nursery.cancel_scope.cancel()
            if self.stopping:
                # One that had not served yet had nothing to drain: the signal may have come
                # before it could take it (its default action ends it), and that is no fault.
                self.statuses[index] = status if worker.ready.is_set() else 0
                return
            if not self.all_ready.is_set() and not worker.ready.is_set():
                pid = worker.process.pid
                log.error("worker %d (pid %d) could not start (exit status %d)", index, pid, status)
                self.failed = 2 if status == 2 else 1
                self.stopping = True
                self.all_ready.set()
                self._signal_all(signal.SIGTERM)
                return
            served = trio.current_time() - worker.started_at
            quick_crashes = quick_crashes + 1 if served < HEALTHY_AFTER_S else 0
            delay = restart_delay(quick_crashes)
            log.warning(
                "worker %d (pid %d, node %s) exited with status %d; starting it again in %g s",
                index,
                worker.process.pid,
                worker.node or "?",
                status,
                delay,
            )
            await trio.sleep(delay)
            old = worker
            worker = await self._start(index)
            if worker is not None:
                pids = old.process.pid, worker.process.pid
                log.warning("worker %d restarted: pid %d -> pid %d", index, *pids)

    async def _start(self, index: int) -> Worker | None:
        """Start slot `index`'s worker; None if the pool is stopping."""
        async with self.spawning:
            if self.stopping:
                return None
            ours, theirs = socket.socketpair()
            fds = [listener.socket.fileno() for listener in self.listeners]
            command = [
                *self.command,
                "--parent-fd",
                str(theirs.fileno()),
                "--listen-fds",
                ",".join(map(str, fds)),
            ]
            try:
                process = await trio.lowlevel.open_process(
                    command,
                    pass_fds=[*fds, theirs.fileno()],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    process_group=0,
                )
            finally:
                theirs.close()
        link = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        worker = Worker(index, process, link, trio.current_time())
        self.workers[index] = worker
        if self.stopping:  # the stop came while it was being started: it is told too
            process.send_signal(self.stop_signal)
        return worker

    async def _listen(self, worker: Worker) -> None:
        """What `worker` says: that it serves, and its metrics (answered with the others')."""
        reader = _Reader(worker.link)
        try:
            while True:
                with trio.move_on_after(SILENT_FOR_S) as silence:
                    message = await reader.receive()
                if silence.cancelled_caught and worker.ready.is_set():
                    self._hung(worker)
                    continue
                if message is None:
                    break
                if "ready" in message:
                    worker.node = str(message["ready"])
                    worker.ready.set()
                    pid = worker.process.pid
                    log.info(
                        "worker %d (pid %d) serving as node %s", worker.index, pid, worker.node
                    )
                    if (
                        all(w.ready.is_set() for w in self.workers.values())
                        and len(self.workers) == self.count
                    ):
                        self.all_ready.set()
                elif "metrics" in message:
                    worker.exposition = str(message["metrics"])
                    others = {
                        other.node: other.exposition
                        for other in self.workers.values()
                        if other is not worker and other.exposition
                    }
                    await _send(worker.link, {"others": others})
        except (trio.BrokenResourceError, trio.ClosedResourceError, LinkBroken):
            pass  # the worker is going: its exit is what the supervisor acts on
        finally:
            worker.exposition = ""
            await worker.link.aclose()


async def run_pool(config: Config, command: list[str], env: dict[str, str]) -> int:
    """Bind `config`'s host and port, and run `config.workers` workers on them, each started
    with `command` (and its descriptors) in `env`, until they have drained; the exit status.
    A port that cannot be bound raises `ListenError`."""
    listeners = await open_listeners(config.host, config.port)
    pool = Pool(config, config.workers, command, env, listeners)
    return await pool.run()


def restart_delay(quick_crashes: int) -> float:
    """The delay before a crashed worker starts again, after `quick_crashes` crashes in a row
    each within `HEALTHY_AFTER_S` of its start (0: it had served longer)."""
    return float(min(MAX_RESTART_DELAY_S, FIRST_RESTART_DELAY_S * 2 ** max(0, quick_crashes - 1)))
