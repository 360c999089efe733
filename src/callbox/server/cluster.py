"""The trio shell of a cluster node: the single process's shell (`SignalingServer`), with every
event run against the shared store (docs/decisions/0014-cluster.md).

What changes from a single process:

- **Events queue.** The transport's callbacks cannot wait, and an event may have to load records
  and commit, so each is queued (`MAX_QUEUED_EVENTS`) and one task takes them in order into the
  node's `Pipeline`, which runs many at once (a connection's one at a time, in order) and sends
  their commits and loads a round trip at a time. A client message that finds
  the queue full, or the store out of reach for `RETRY_FOR` seconds, gets `error unavailable`
  (not applied); a `hello` gets close 1013 instead. A timer that could not run is run again a
  second later.
- **Frames.** What a commit numbers reaches this node's connections through the `Gateway`, in
  `seq` order; frames for another node's connections wake that node (the `Bus`), which reads them
  from the session's outbox. A resume's replay is read from the outbox too.
- **Time.** The core's `now` is the cluster's clock (the store's, in seconds), so a deadline
  one node writes into a record means the same on every node; timers run on the local clock,
  shifted by the difference measured at start.
- **Connection ids** are unique in the cluster: the node's number in the high bits.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final, Protocol, TypeVar

import trio
from attrs import define, field, frozen

from callbox.cluster.backend import (
    Backend,
    ClusterUnavailable,
    Conflict,
    Expired,
    Outcome,
    Transaction,
)
from callbox.cluster.node import (
    Fetch,
    Finished,
    Forward,
    Gateway,
    Load,
    Loaded,
    Node,
    Pipeline,
    RerunDiverged,
    Wake,
    first_conn,
)
from callbox.cluster.node_store import NodeStore, timer_name, timer_of_name
from callbox.codec import encode, rid_of
from callbox.config import Config
from callbox.core.actions import (
    CALL_TIMERS,
    CLOSE_RESTART,
    Action,
    CancelTimer,
    Close,
    ConnId,
    OpenCall,
    Send,
    StartTimer,
    TimerKey,
)
from callbox.core.calls import Call
from callbox.core.encoding import decode_record
from callbox.core.sessions import Session
from callbox.core.store import User
from callbox.core.switchboard import Switchboard
from callbox.messages import Error
from callbox.server.app import Parent, SignalingServer, build_switchboard, run_server
from callbox.server.transport.connection import Connection
from callbox.server.transport.http import HttpRequest, HttpResponse

log = logging.getLogger("callbox.cluster")

T = TypeVar("T")

MAX_QUEUED_EVENTS: Final = 10_000
"""Events waiting for the node's event task; beyond, messages are answered `unavailable`."""
MAX_IN_FLIGHT: Final = 512
"""Events a node runs at once (`Pipeline`): the most transactions one commit carries."""
RETRY_FOR: Final = 2.0
"""Seconds a load or commit is retried while the store is out of reach."""
FETCH_LIMIT: Final = 256
"""Frames read from an outbox per request (a resume's replay may take several)."""
TIMER_RETRY: Final = 1.0
"""Seconds before a timer whose event could not commit is run again."""
OVERDUE_S: Final = 1.0
"""How late a timer of the cluster must be before any node fires it (its own node is gone)."""
OVERDUE_POLL_S: Final = 0.25
"""How often a node looks for such timers: a dead node's fire at most ~1.25 s late."""
OVERDUE_BATCH: Final = 100
LEASE_S: Final = 5.0
"""A node not heard from for this long is taken for dead (LiveKit 5 s, Centrifuge 7 s)."""
LEASE_RENEW_S: Final = 1.0
UNHEALTHY_AFTER_S: Final = 2.5
"""`/healthz` fails once the store has not answered the lease renewal for this long."""
CLOCK_MARGIN_S: Final = 0.2
"""How far a node's idea of the cluster's clock may be off (measured once, at start)."""
CATCH_UP_S: Final = 5.0
CATCH_UP_BATCH: Final = 500
CLOSE_UNAVAILABLE: Final = 1013
COUNTED_RECORDS: Final = 100_000
"""The admin API's statistics count at most this many records of each kind in the store."""
UNAVAILABLE_MESSAGE: Final = (
    "the cluster's store is out of reach: the message was not applied; send it again"
)


class Bus(Protocol):
    """How nodes wake each other: at most once, in order per sender, possibly not at all (a
    lost wake-up delays frames until the next one, never loses them: outboxes hold them)."""

    async def publish(self, node: int, message: bytes) -> None: ...
    def subscribe(self, node: int) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


@define(eq=False)
class MemoryBus:
    """The `Bus` of nodes in one process (tests)."""

    _channels: dict[int, trio.MemorySendChannel[bytes]] = field(factory=dict)

    async def publish(self, node: int, message: bytes) -> None:
        channel = self._channels.get(node)
        if channel is not None:
            lost = (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError)
            with contextlib.suppress(*lost):  # as pub/sub loses them: the outbox has the frames
                channel.send_nowait(message)

    @asynccontextmanager
    async def subscribe(self, node: int) -> AsyncIterator[AsyncIterator[bytes]]:
        send, receive = trio.open_memory_channel[bytes](MAX_QUEUED_EVENTS)
        self._channels[node] = send
        try:
            async with receive:
                yield receive
        finally:
            self._channels.pop(node, None)


@frozen
class Queued:
    """An event waiting for the node's event task (a `Runnable` of its `Pipeline`)."""

    run: Callable[[], list[Action]]
    conn: ConnId | None = None
    """The connection it is about: its events run one at a time, in order."""
    data: bytes | None = None
    """A client message's (told if it cannot be applied)."""
    timer: bool = False
    """A timer's firing: run again later if it cannot be applied now."""
    exclusive: bool = False
    """Whether it runs alone (`Runnable.exclusive`): a message on a connection without a
    session yet (a `hello`, which may take another connection over, and reads the sign-in
    throttle all `hello`s share), a timer, a dead node's session detached."""
    refused: Callable[[], None] | None = None
    """Told if it cannot be applied (`ClusterServer.apply` waits on it)."""


def wake_message(wake: Wake) -> bytes:
    """A wake-up on the bus, one line, with its frame: a frame is JSON as the codec writes it,
    which holds no raw newline (one that did would go without: the node reads it)."""
    frame = b"" if b"\n" in wake.frame else wake.frame
    return b"w %d %d %s %s" % (wake.conn, wake.seq, wake.session_id.encode(), frame)


def close_message(close: Close) -> bytes:
    return f"c {close.conn} {close.code} {close.reason}".encode()


def bus_message(line: bytes, node: int) -> Wake | Close:
    """What a line of `wake_message` or `close_message` says, heard by node `node`."""
    kind, conn, number, rest = line.split(b" ", 3)
    if kind == b"w":
        session_id, _, frame = rest.partition(b" ")
        return Wake(node, int(conn), session_id.decode(), int(number), frame)
    return Close(int(conn), int(number), rest.decode())


class ClusterServer(SignalingServer):
    """A node: connections and timers here, records and outboxes in the shared store."""

    def __init__(
        self,
        switchboard: Switchboard,
        nursery: trio.Nursery,
        *,
        backend: Backend,
        bus: Bus,
        number: int,
        clock_offset: float,
        instance: str,
    ) -> None:
        super().__init__(switchboard, nursery)
        store = switchboard.store
        assert isinstance(store, NodeStore), "a cluster node's switchboard runs on a NodeStore"
        self.number = number
        self._backend = backend
        self._bus = bus
        self._node = Node(store, switchboard.tokens)
        self._pipeline = Pipeline[Queued](self._node, MAX_IN_FLIGHT)
        self.counts: Counter[str] = Counter()
        """Requests to the store and what became of them, for /metrics."""
        self.metrics.cluster = self.counts
        self._gateway = Gateway(number)
        self._first_conn = first_conn(number)
        self._offset = clock_offset
        """The cluster's clock minus trio's, in seconds."""
        self._batches = itertools.count(1)
        self._queue, self._queued = trio.open_memory_channel[Queued](MAX_QUEUED_EVENTS)
        self._armed: dict[str, int] = {}
        """The deadline (cluster ms) of each timer of the cluster this node armed."""
        self._reached_at = trio.current_time()
        """When the store last answered this node's lease renewal (trio's clock)."""
        self._instance = instance
        """The id of the store's data when this node started (`Backend.instance`)."""
        nursery.start_soon(self._run_events, name=f"node {number} events")
        nursery.start_soon(self._listen, name=f"node {number} wake-ups")
        nursery.start_soon(self._fire_overdue, name=f"node {number} overdue timers")
        nursery.start_soon(self._keep_lease, name=f"node {number} lease")
        nursery.start_soon(self._take_over_dead_nodes, name=f"node {number} reaper")
        nursery.start_soon(self._catch_up, name=f"node {number} catch-up")

    def _now(self, local: float | None = None) -> float:
        """The cluster's clock, in seconds, at trio's `local` time (default: now)."""
        return (trio.current_time() if local is None else local) + self._offset

    def _id(self, conn: Connection) -> ConnId:
        return self._first_conn + conn.id

    # ConnectionHandler: every event queued -----------------------------------------------------

    def on_open(self, conn: Connection) -> None:
        conn_id = self._id(conn)
        self._opened(conn_id, conn)
        now, address = self._now(), conn.client_host
        connect = Queued(lambda: self.switchboard.connect(conn_id, now, address), conn_id)
        self._enqueue(connect)

    def on_text(self, conn: Connection, data: bytes) -> None:
        conn_id = self._id(conn)
        now, wall = self._now(conn.last_received), time.time()
        signed_in = self.switchboard.has_session(conn_id)
        self._enqueue(
            Queued(
                lambda: self.switchboard.receive(conn_id, data, now, wall),
                conn_id,
                data,
                exclusive=not signed_in,
            )
        )

    def on_binary(self, conn: Connection, data: bytes) -> None:
        conn_id, now = self._id(conn), self._now()
        self._enqueue(Queued(lambda: self.switchboard.receive_binary(conn_id, now), conn_id))

    def on_close(self, conn: Connection, code: int | None, reason: str) -> None:
        conn_id, now = self._id(conn), self._now()
        self._closed(conn_id)
        self._gateway.closed(conn_id)
        self._enqueue(Queued(lambda: self.switchboard.disconnect(conn_id, now), conn_id))

    async def drain(self) -> None:
        """As a single process drains, and then until the event task has run what the closes
        queued: each connection's close detaches its session in the store, so that its grace
        starts now and its client can resume on another node at once."""
        await super().drain()
        done = trio.Event()

        def mark() -> list[Action]:
            done.set()
            return []

        # Exclusive: it starts once every event queued before it has ended, the closes too.
        self._enqueue(Queued(mark, exclusive=True))
        await done.wait()

    def _start_timer(self, key: TimerKey, deadline: float) -> None:
        """A call's timer runs in the call's nursery here, opened now if the call began on
        another node: the node of an event arms what it asks for (the answer's, the cap), and
        `call_initiate` opened the nursery only on its own node."""
        if isinstance(key, CALL_TIMERS) and key.call_id not in self._calls:
            super()._carry_out([OpenCall(key.call_id)])
        super()._start_timer(key, deadline)

    def _cancel_timer(self, key: TimerKey) -> None:
        super()._cancel_timer(key)
        self._close_call_if_idle(key)

    def _close_call_if_idle(self, key: TimerKey) -> None:
        """Closes a call's nursery here once none of its timers runs here: the call may end on
        another node, whose `CloseCall` this one never sees, and a nursery only runs timers."""
        if isinstance(key, CALL_TIMERS):
            tasks = self._calls.get(key.call_id)
            if tasks is not None and not tasks.timers:
                del self._calls[key.call_id]
                tasks.cancel_scope.cancel()

    def _timer_fired(self, key: TimerKey) -> None:
        self._close_call_if_idle(key)  # the timer is done: `_run_timer` has forgotten it
        name = timer_name(key)
        deadline = None if name is None else self._armed.pop(name, None)
        self._fire(key, None if name is None or deadline is None else (name, deadline))

    def _fire(self, key: TimerKey, claim: tuple[str, int] | None) -> None:
        """Queue the firing of `key`; `claim`: the cluster's timer it is, and its deadline."""
        now, wall = self._now(), time.time()
        store = self._node.store

        def fire() -> list[Action]:
            store.firing = claim
            return self.switchboard.timer_fired(key, now, wall)

        self._enqueue(Queued(fire, timer=True, exclusive=True))

    async def _fire_overdue(self) -> None:
        """Fire the cluster's timers overdue by `OVERDUE_S`: their node died (or is stuck). Each
        fires once whichever node gets there first (`Transaction.fired`)."""
        while True:
            await trio.sleep(OVERDUE_POLL_S)
            before = round((self._now() - OVERDUE_S) * 1000)
            try:
                overdue = await self._backend.overdue(before, OVERDUE_BATCH)
            except ClusterUnavailable:
                continue
            for name, deadline in overdue:
                self._fire(timer_of_name(name), (name, deadline))

    def _enqueue(self, event: Queued) -> None:
        try:
            self._queue.send_nowait(event)
        except trio.WouldBlock:
            log.warning("node %d: %d events queued; refusing one", self.number, MAX_QUEUED_EVENTS)
            self._refuse(event)

    # The event task --------------------------------------------------------------------------

    async def _run_events(self) -> None:
        """Take events in order into the pipeline, as many as may run together, and serve
        their requests a round trip at a time: a busy node commits many events per round trip
        (`Pipeline`), an idle one each as it comes."""
        pipeline = self._pipeline
        offered: Queued | None = None
        """An event the pipeline could not take yet: it goes first after the next round."""
        while True:
            finished: list[Finished[Queued]] = []
            if offered is None and pipeline.idle:
                offered = await self._queued.receive()
            while offered is not None:
                taken, done = pipeline.offer(offered)
                finished += done
                if not taken:
                    break
                try:
                    offered = self._queued.receive_nowait()
                except trio.WouldBlock:
                    offered = None
            finished += await self._round(pipeline)
            await self._finish(finished)

    async def _round(self, pipeline: Pipeline[Queued]) -> list[Finished[Queued]]:
        """One batch of commits, then one of loads, for the events in flight: their answers,
        and the events that finished with them."""
        finished: list[Finished[Queued]] = []
        batch = pipeline.commits()
        if batch:
            batch_id = f"{self.number}:{next(self._batches)}"
            try:
                outcomes = await self._reach("commit", lambda by: self._commit(batch_id, batch, by))
            except ClusterUnavailable as unavailable:
                finished += pipeline.failed(unavailable)
            else:
                self.counts["transactions"] += len(batch)
                self.counts["conflicts"] += sum(isinstance(o, Conflict) for o in outcomes)
                finished += pipeline.committed(outcomes)
        load = pipeline.loads()
        if load is not None:
            try:
                loaded = await self._reach("load", lambda _: self._load(load))
            except ClusterUnavailable as unavailable:
                finished += pipeline.failed(unavailable)
            else:
                finished += pipeline.loaded(loaded)
        return finished

    async def _finish(self, finished: list[Finished[Queued]]) -> None:
        """Carry out what the events did, together (one wake-up per node), in the order they
        finished; refuse the events that could not be applied."""
        actions: list[Action] = []
        for done in finished:
            if isinstance(done.error, RerunDiverged):
                log.error("node %d: %s", self.number, done.error)
            elif done.error is not None:
                log.warning("node %d: event not applied: %s", self.number, done.error)
                self.counts["not_applied"] += 1
                self._refuse(done.event)
            actions += done.actions
        if actions:
            await self._carry_out_routed(actions)

    async def _reach(self, request: str, ask: Callable[[int], Awaitable[T]]) -> T:
        """`ask(not_after)` answered by the store, retried for `RETRY_FOR` seconds while out
        of reach (a commit under the same batch id: it applies once however often it is sent).
        `not_after`: the cluster's time (ms) after which what has not applied never will: the
        store refuses it if it wakes up later."""
        started = trio.current_time()
        give_up = started + RETRY_FOR
        delay = 0.05
        not_after = round((self._now(give_up) - CLOCK_MARGIN_S) * 1000)
        with trio.move_on_at(give_up):  # a frozen store answers nothing, not even an error
            while True:
                self.counts[f"{request}_round_trips"] += 1
                try:
                    answer = await ask(not_after)
                except ClusterUnavailable:
                    if trio.current_time() + delay > give_up:
                        raise
                    self.counts["retries"] += 1
                    await trio.sleep(delay)
                    delay = min(2 * delay, 0.5)
                else:
                    self.metrics.store_seconds.observe(trio.current_time() - started)
                    return answer
        raise ClusterUnavailable(f"no answer from the store in {RETRY_FOR} s")

    async def _commit(
        self, batch_id: str, batch: list[Transaction], not_after: int
    ) -> list[Outcome]:
        outcomes = await self._backend.commit(batch_id, batch, not_after)
        if any(isinstance(outcome, Expired) for outcome in outcomes):
            raise ClusterUnavailable("the store answered too late: nothing was applied")
        return outcomes

    async def _load(self, load: Load) -> Loaded:
        records = await self._backend.load(load.keys) if load.keys else {}
        outboxes = await self._backend.outboxes(load.outboxes) if load.outboxes else {}
        return records, outboxes

    def _refuse(self, event: Queued) -> None:
        """The event could not be applied: a client message is answered `unavailable` (a
        `hello`, close 1013), a timer is run again later; a lost connection's grace starts when
        the store is back (its session's node will be found dead)."""
        if event.refused is not None:
            event.refused()
        if event.timer:
            self._nursery.start_soon(self._retry, event)
            return
        if event.conn is None or event.data is None:
            return
        connection = self._connections.get(event.conn)
        if connection is None:
            return
        if not self.switchboard.has_session(event.conn):
            connection.close(CLOSE_UNAVAILABLE, "store unavailable")
            return
        error = Error(code="unavailable", message=UNAVAILABLE_MESSAGE, rid=rid_of(event.data))
        connection.send_text(encode(error))

    # What events do --------------------------------------------------------------------------

    async def _carry_out_routed(self, actions: list[Action]) -> None:
        wakes: dict[int, list[bytes]] = {}
        for item in self._gateway.route(actions):
            if isinstance(item, Wake):
                wakes.setdefault(item.node, []).append(wake_message(item))
            elif isinstance(item, Forward):
                if isinstance(item.action, Close):
                    wakes.setdefault(item.node, []).append(close_message(item.action))
            elif isinstance(item, Fetch):
                await self._fetch(item)
            elif isinstance(item, StartTimer):  # the core's deadline is on the cluster's clock
                name = timer_name(item.key)
                if name is not None:
                    self._armed[name] = round(item.deadline * 1000)
                super()._carry_out([StartTimer(item.key, item.deadline - self._offset)])
            elif isinstance(item, CancelTimer):
                name = timer_name(item.key)
                if name is not None:
                    self._armed.pop(name, None)
                super()._carry_out([item])
            else:
                super()._carry_out([item])
        for node, messages in wakes.items():
            await self._bus.publish(node, b"\n".join(messages))

    # Nodes: this one's lease, and the others' death ------------------------------------------

    def resource(self, path: str, request: HttpRequest) -> HttpResponse | None:
        """`/healthz` fails while this node cannot reach the store (its lease is not renewed):
        a load balancer then sends new clients to another node."""
        if path == "/healthz" and trio.current_time() - self._reached_at > UNHEALTHY_AFTER_S:
            return 503, [("Content-Type", "text/plain")], b"the cluster's store is out of reach\n"
        return super().resource(path, request)

    # The admin API: events through the event task, reads from the store ----------------------

    def core_now(self) -> float:
        return self._now()

    async def apply(self, event: Callable[[], list[Action]]) -> list[Action]:
        """Queue `event` (one of the admin API's) for this node's event task, which runs it as
        any event (committed to the store, then carried out: its `Close` of a connection on
        another node is forwarded there); returns its committed actions. Raises
        `ClusterUnavailable` if it was not applied (the queue full, the store out of reach)."""
        settled = trio.Event()
        committed: list[list[Action]] = []

        def run() -> list[Action]:
            actions = event()
            committed.append(actions)  # the run that returns is the one that stands
            settled.set()
            return actions

        # Exclusive: removing a user unlinks connections of this node other than its own.
        self._enqueue(Queued(run, exclusive=True, refused=settled.set))
        await settled.wait()
        if not committed:
            raise ClusterUnavailable("the cluster's store is out of reach: nothing was done")
        return committed[-1]

    async def _records(self, names: list[str]) -> list[bytes]:
        """The stored records under `names` that exist (read from the store, not the cache)."""
        loaded = await self._backend.load(names) if names else {}
        return [versioned.data for versioned in loaded.values() if versioned.data is not None]

    async def find_call(self, call_id: str) -> Call | None:
        found = await self._records([f"call:{call_id}"])
        return decode_record(Call, found[0]) if found else None

    async def list_calls(self, limit: int) -> list[Call]:
        names = await self._backend.record_names("call", limit)
        return [decode_record(Call, data) for data in await self._records(names)]

    async def find_user(self, user_id: str) -> tuple[User, list[Session]] | None:
        found = await self._records([f"user:{user_id}"])
        if not found:
            return None
        user = decode_record(User, found[0])
        names = [f"session:{session_id}" for session_id in user.sessions]
        return user, [decode_record(Session, data) for data in await self._records(names)]

    async def statistics(self) -> dict[str, int]:
        """This node's connections; the cluster's records, counted up to `COUNTED_RECORDS`."""
        counts = {"connections": len(self._connections)}
        for kind in ("session", "user", "call", "room"):
            counts[f"{kind}s"] = len(await self._backend.record_names(kind, COUNTED_RECORDS))
        return counts

    async def _keep_lease(self) -> None:
        """Renew this node's lease every `LEASE_RENEW_S`. A node found dead meanwhile (it could
        not renew for `LEASE_S`: frozen, or cut off from the store) has had its sessions taken
        over: it closes its connections with 1012, so that their clients resume anywhere."""
        while True:
            until = round((self._now() + LEASE_S) * 1000)
            try:
                held = await self._backend.renew_lease(self.number, until)
                instance = await self._backend.instance()
            except ClusterUnavailable as unavailable:
                log.warning("node %d: lease not renewed: %s", self.number, unavailable)
            else:
                self._reached_at = trio.current_time()
                if instance != self._instance:
                    self._store_lost(instance)
                elif not held:
                    self._taken_for_dead()
            await trio.sleep(LEASE_RENEW_S)

    def _store_lost(self, instance: str) -> None:
        """The store restarted empty: every session and call is gone. The cache goes, the
        calls' tasks stop, and every connection is closed with 1012, so that each client
        signs in again (its resume gets `resumed: false`)."""
        log.error(
            "node %d: the cluster's store lost its data (restarted empty?): closing %d"
            " connections, clients start over",
            self.number,
            len(self._connections),
        )
        self._instance = instance
        self._node.store.forget_everything()
        self._gateway.written.clear()
        self._armed.clear()
        for call in self._calls.values():
            call.cancel_scope.cancel()
        self._calls.clear()
        for connection in list(self._connections.values()):
            connection.close(CLOSE_RESTART, "cluster state lost")

    def _taken_for_dead(self) -> None:
        log.warning(
            "node %d: its lease had run out and its sessions were taken over; closing its %d"
            " connections so that their clients resume",
            self.number,
            len(self._connections),
        )
        for connection in list(self._connections.values()):
            connection.close(CLOSE_RESTART, "node restarting")

    async def _take_over_dead_nodes(self) -> None:
        """Every `LEASE_RENEW_S`, claim the nodes whose lease ran out (each is claimed once,
        by whichever node gets there first) and start the grace period of every session that
        was on one of their connections: their clients resume on another node, or their
        peers are told once the grace has passed."""
        while True:
            await trio.sleep(LEASE_RENEW_S)
            try:
                dead = await self._backend.dead_nodes(round(self._now() * 1000))
                for node in dead:
                    if node != self.number:
                        self._detach_all(node, await self._backend.claim_node(node))
            except ClusterUnavailable as unavailable:
                log.warning("node %d: dead nodes not looked for: %s", self.number, unavailable)

    def _detach_all(self, node: int, sessions: list[tuple[str, int]]) -> None:
        if sessions:
            log.warning("node %d found dead: %d sessions were on it", node, len(sessions))
        store = self._node.store
        for session_id, conn in sessions:
            now = self._now()

            def detach(
                session_id: str = session_id, conn: int = conn, now: float = now
            ) -> list[Action]:
                store.node_died = True
                return self.switchboard.connection_gone_elsewhere(conn, session_id, now)

            # retried, as a timer is, if it fails
            self._enqueue(Queued(detach, timer=True, exclusive=True))

    async def _retry(self, event: Queued) -> None:
        await trio.sleep(TIMER_RETRY)
        self._enqueue(event)

    async def _fetch(self, fetch: Fetch) -> None:
        """Write the frames `fetch` asks for, as many reads as it takes."""
        while True:
            self.counts["fetch_round_trips"] += 1
            try:
                frames = await self._backend.frames_after(
                    fetch.session_id, fetch.after_seq, FETCH_LIMIT
                )
            except ClusterUnavailable as unavailable:
                log.warning("node %d: frames not read: %s", self.number, unavailable)
                return  # the next frame for the session finds the gap and reads them
            for send in self._gateway.fetched(fetch, frames):
                self._write(send)
            if len(frames) < FETCH_LIMIT:
                return
            fetch = Fetch(fetch.conn, fetch.session_id, frames[-1][0])

    async def _catch_up(self) -> None:
        """Every `CATCH_UP_S`, compare each local session's outbox with what was written to
        its connection, and fetch what is missing: a wake-up lost (pub/sub drops what is
        published while a subscriber reconnects) delays frames by that much at most."""
        while True:
            await trio.sleep(CATCH_UP_S)
            carried = list(self._gateway.written.items())
            for start in range(0, len(carried), CATCH_UP_BATCH):
                batch = carried[start : start + CATCH_UP_BATCH]
                try:
                    outboxes = await self._backend.outboxes([sid for _, (sid, _) in batch])
                except ClusterUnavailable:
                    break
                for conn, (sid, written) in batch:
                    state = outboxes.get(sid)
                    if state is not None and state.next_seq - 1 > written:
                        self.counts["catch_ups"] += 1
                        await self._fetch(Fetch(conn, sid, written))

    async def _listen(self) -> None:
        """Wake-ups and forwarded closes from the other nodes."""
        async with self._bus.subscribe(self.number) as messages:
            async for message in messages:
                for line in message.split(b"\n"):
                    await self._heard(line)

    async def _heard(self, line: bytes) -> None:
        heard = bus_message(line, self.number)
        if isinstance(heard, Wake):
            for item in self._gateway.woken(heard):
                if isinstance(item, Send):
                    self._write(item)
                else:
                    await self._fetch(item)
        else:
            self._gateway.closed(heard.conn)
            super()._carry_out([heard])


async def serve_node(
    config: Config,
    backend: Backend,
    bus: Bus,
    *,
    drain: trio.Event | None = None,
    parent: Parent | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node of the cluster on `backend` and `bus` until cancelled or drained (see
    `run_server`)."""
    number = await backend.register_node()
    now_ms = await backend.now_ms()
    clock_offset = now_ms / 1000 - trio.current_time()
    await backend.renew_lease(number, now_ms + round(LEASE_S * 1000))
    instance = await backend.instance()
    name = f"{socket.gethostname()}/{number}"
    log.info("cluster node %s", name)

    def make_server(nursery: trio.Nursery) -> ClusterServer:
        # The tests check the core's read-only events; serving, that check costs too much.
        switchboard = build_switchboard(config, NodeStore(check_read_only=False), name)
        return ClusterServer(
            switchboard,
            nursery,
            backend=backend,
            bus=bus,
            number=number,
            clock_offset=clock_offset,
            instance=instance,
        )

    await run_server(config, make_server, task_status, drain=drain, parent=parent)


async def serve_on_redis(
    config: Config,
    url: str,
    *,
    drain: trio.Event | None = None,
    parent: Parent | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node of the cluster on the Redis at `url` (until cancelled or drained)."""
    from callbox.cluster.redis_backend import RedisBus, connect  # noqa: PLC0415

    async with connect(url) as backend:
        await serve_node(
            config,
            backend,
            RedisBus(backend),
            drain=drain,
            parent=parent,
            task_status=task_status,
        )
