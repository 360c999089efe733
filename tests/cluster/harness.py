"""The core harness (tests/core/harness.py) over a cluster: several nodes, each a switchboard on
its own `NodeStore`, sharing one `MemoryBackend`, with no sockets and no event loop.

Connections are spread over the nodes in turn (or placed by the test: `open(node=...)`), so two
parties of a call are mostly on different nodes. An event about a connection runs on the node
that holds it, through `Node.run`, with loads and commits answered by the backend at once; what
it numbers reaches each connection through its node's `Gateway`, by a wake-up when another node
committed it. Timers are the cluster's: any node may start or cancel one; it fires on the node
that started it.

With `pytest --cluster` (tests/conftest.py) every `Harness` of the core suite is made one of
these, so the whole core suite also runs as a cluster of three nodes.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from attrs import define, field, frozen

from callbox.cluster.backend import MemoryBackend
from callbox.cluster.node import (
    Commit,
    Fetch,
    Finished,
    Forward,
    Gateway,
    Load,
    Node,
    Pipeline,
    Reply,
    Request,
    RerunDiverged,
    Unavailable,
    Wake,
    first_conn,
    node_of,
)
from callbox.cluster.node_store import NodeStore, timer_name
from callbox.core.actions import Action, CancelTimer, Close, ConnId, StartTimer, TimerKey
from callbox.core.store import RecordKey, TrackingStore
from callbox.core.switchboard import Switchboard
from callbox.messages import IceServer
from tests.core.harness import Harness, Wire

FETCH_LIMIT = 10_000


class Snapshot(NodeStore):
    """Every record of the backend, as loaded at once: a key it does not hold is absent."""

    def looked_up(self, key: RecordKey) -> None:
        TrackingStore.looked_up(self, key)


@define(eq=False)
class ClusterNode:
    number: int
    switchboard: Switchboard
    store: NodeStore
    node: Node
    gateway: Gateway
    conns: itertools.count[int] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.conns = itertools.count(first_conn(self.number) + 1)


class ClusterMixin(Harness):
    """Makes a `Harness` (or a subclass) a cluster of `node_count` nodes (see the module)."""

    node_count = 3

    def __init__(self, *args: Any, **overrides: Any) -> None:
        self.backend = MemoryBackend()
        self._tokens = itertools.count(1)
        super().__init__(*args, **overrides)
        self.nodes = {n: self._node(n) for n in range(1, self.node_count + 1)}
        self._turn = itertools.cycle(self.nodes)
        self._timer_node: dict[TimerKey, int] = {}
        self.place_next: int | None = None
        """The node the next connection opens on (then back to taking turns)."""

    @property  # type: ignore[override]
    def switchboard(self) -> Switchboard:
        """What a test reads of "the" switchboard: every record in the backend, loaded into a
        switchboard of its own, with every node's connections."""
        view = self._switchboard(missing=False)
        store = view.store = Snapshot()
        backend = self.backend
        store.install(
            backend.load_now(list(backend.records)),
            backend.outboxes_now(list(backend.outboxes_by_session)),
        )
        for node in getattr(self, "nodes", {}).values():
            view._links.update(node.switchboard._links)
        return view

    @switchboard.setter
    def switchboard(self, _: Switchboard) -> None:
        """`Harness.__init__` sets one: the nodes are made instead."""

    def _switchboard(self, *, missing: bool) -> Switchboard:
        assert not missing, "a cluster's nodes miss records by themselves"
        return Switchboard(
            config=self.config,
            authenticate=self._authenticate,
            ice_servers=lambda user_id: [IceServer(urls=["stun:stun.example.org"])],
            ice_refresh_in=lambda: self.ice_refresh,
            new_token=lambda n: f"t{next(self._tokens)}",
            outbox=self.outbox_type(),
            store=NodeStore(),
        )

    def _node(self, number: int) -> ClusterNode:
        switchboard = self._switchboard(missing=False)
        store = switchboard.store
        assert isinstance(store, NodeStore)
        return ClusterNode(
            number, switchboard, store, Node(store, switchboard.tokens), Gateway(number)
        )

    # Where events run ----------------------------------------------------------------------

    def login_on(self, node: int, user_id: str) -> int:
        """`login` on node `node`."""
        self.place_next = node
        return self.login(user_id)

    def _new_conn(self) -> int:
        number = self.place_next if self.place_next is not None else next(self._turn)
        self.place_next = None
        return next(self.nodes[number].conns)

    def _on(self, conn: int, event: Callable[[Switchboard], list[Action]]) -> None:
        self._run(self.nodes[node_of(conn)], event)

    def server_event(self, event: Callable[[Switchboard], list[Action]]) -> None:
        """On the first node, whichever holds the connections it concerns."""
        self._run(self.nodes[1], event)

    def drop(self, conn: int) -> None:
        self.nodes[node_of(conn)].gateway.closed(conn)
        super().drop(conn)

    def _fire(self, key: TimerKey, deadline: float) -> None:
        """On the node that armed it, claiming it if it is one of the cluster's."""
        now, wall = self.now, self.wall
        node = self.nodes[self._timer_node.pop(key, 1)]
        name = timer_name(key)

        def fire(switchboard: Switchboard) -> list[Action]:
            if name is not None:
                node.store.firing = (name, round(deadline * 1000))
            return switchboard.timer_fired(key, now, wall)

        self._run(node, fire)

    def _run(self, node: ClusterNode, event: Callable[[Switchboard], list[Action]]) -> None:
        steps = self._steps(node, event)
        try:
            request = next(steps)
            while True:
                request = steps.send(self._serve(request))
        except StopIteration as done:
            self._done(node, done.value)

    def _steps(
        self, node: ClusterNode, event: Callable[[Switchboard], list[Action]]
    ) -> Generator[Request, Reply, list[Action]]:
        return node.node.run(lambda: event(node.switchboard))

    def _done(self, node: ClusterNode, actions: list[Action]) -> None:
        """An event of `node` has committed: carry out what it did."""
        self._carry_out(node, node.gateway.route(actions))

    def _serve(self, request: Load | Commit) -> Reply:
        backend = self.backend
        if isinstance(request, Load):
            return backend.load_now(request.keys), backend.outboxes_now(request.outboxes)
        (outcome,) = backend.commit_now(f"b{next(self._tokens)}", [request.transaction])
        return outcome

    def _carry_out(self, node: ClusterNode, routed: list[Any]) -> None:
        for item in routed:
            if isinstance(item, Wake):
                target = self.nodes[item.node]
                self._carry_out(target, list(target.gateway.woken(item)))
            elif isinstance(item, Fetch):
                frames = self.backend.frames_after_now(item.session_id, item.after_seq, FETCH_LIMIT)
                self._apply(list(node.gateway.fetched(item, frames)))
            elif isinstance(item, Forward):
                target = self.nodes[item.node]
                if isinstance(item.action, Close):
                    target.gateway.closed(item.action.conn)
                self._apply([item.action])
            else:
                if isinstance(item, StartTimer):
                    self._timer_node[item.key] = node.number
                elif isinstance(item, CancelTimer):
                    self._timer_node.pop(item.key, None)
                self._apply([item])


class ClusterHarness(ClusterMixin, Harness):
    pass


def cluster_variant(harness: type[Harness]) -> type[Harness]:
    """`harness` run as a cluster (`pytest --cluster`)."""
    return type(f"Cluster{harness.__name__}", (ClusterMixin, harness), {})


@frozen
class Event:
    """An event queued on a node (a `Runnable`)."""

    run: Callable[[], list[Action]]
    conn: ConnId
    exclusive: bool


class PipelineHarness(ClusterHarness):
    """A cluster whose nodes run their events as the shell does, through a `Pipeline`: once
    `stepping`, events wait in a queue per node, and a node moves a step at a time (`step`)."""

    def __init__(self, max_in_flight: int) -> None:
        super().__init__()
        self.queued: dict[int, deque[Event]] = {n: deque() for n in self.nodes}
        self.pipelines = {
            n: Pipeline[Event](node.node, max_in_flight) for n, node in self.nodes.items()
        }
        self.unavailable = 0
        self.stepping = False
        self._message = False
        self._batches = itertools.count(1)
        self.batches: list[int] = []
        """The size of each batch committed, in order."""

    def send(self, conn: int, message: Wire | bytes) -> None:
        self._message = True
        try:
            super().send(conn, message)
        finally:
            self._message = False

    def _on(self, conn: int, event: Callable[[Switchboard], list[Action]]) -> None:
        if not self.stepping:
            super()._on(conn, event)
            return
        node = self.nodes[node_of(conn)]
        exclusive = self._message and not node.switchboard.has_session(conn)  # as the shell
        self.queued[node.number].append(Event(lambda: event(node.switchboard), conn, exclusive))

    def busy(self) -> list[int]:
        return [n for n in self.nodes if self.queued[n] or not self.pipelines[n].idle]

    def step(self, number: int) -> None:
        """Node `number` takes one step: takes its next event in if it may, else sends its
        commits, else its loads, and has them answered by the store."""
        node, pipeline, queued = self.nodes[number], self.pipelines[number], self.queued[number]
        if queued:
            taken, finished = pipeline.offer(queued[0])
            if taken:
                queued.popleft()
                self._finish(node, finished)
                return
        batch = pipeline.commits()
        if batch:
            self.batches.append(len(batch))
            outcomes = self.backend.commit_now(f"n{number}:{next(self._batches)}", batch)
            self._finish(node, pipeline.committed(outcomes))
            return
        load = pipeline.loads()
        if load is not None:
            loaded = self.backend.load_now(load.keys), self.backend.outboxes_now(load.outboxes)
            self._finish(node, pipeline.loaded(loaded))

    def _finish(self, node: ClusterNode, finished: list[Finished[Event]]) -> None:
        for done in finished:
            if isinstance(done.error, Unavailable):
                self.unavailable += 1
            elif isinstance(done.error, RerunDiverged):
                raise done.error
            self._done(node, done.actions)

    def settle(self) -> None:
        while busy := self.busy():
            self.step(busy[0])
