"""A node of a cluster, without I/O: how one event runs against the shared store, and how the
frames the store numbers reach the connections this node holds.

`Node.run` turns one call into the switchboard (a message received, a connection lost, a timer
fired) into a generator of requests to the backend (`Load`, `Commit`), answered by whoever
drives it: the trio shell with Redis, a test with `MemoryBackend` and no event loop at all. It
ends with the event's actions, or `Unavailable` if the event could not commit.

`Gateway` writes each session's frames in `seq` order to the connection this node holds for it:
a frame numbered by another node's commit arrives by a wake-up (or not at all, if one is lost),
so a gap is filled from the session's outbox before anything after it is written.

Connection ids are unique in the cluster: a node's number in the high bits (`CONN_BITS`), so a
session record names its connection and, with it, the node that holds it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Final, Generic, Protocol, TypeVar

from attrs import define, field, frozen

from callbox.cluster.backend import (
    CONN_BITS,
    Committed,
    Conflict,
    OutboxState,
    Outcome,
    Overflow,
    Transaction,
    Versioned,
)
from callbox.cluster.node_store import NeedsCommit, NodeStore, key_name
from callbox.codec import with_seq
from callbox.core.actions import Action, Close, ConnId, Numbered, ReplayAfter, Send
from callbox.core.store import Missing
from callbox.core.switchboard import TokenTape

MAX_CONFLICTS: Final = 3
"""Commits of one event refused for contention (a key loaded for the event changed before its
commit) before it is given up (`Unavailable`)."""
MAX_LOADS: Final = 1024
"""Loads for one event before it is given up. An event on a node that has cached nothing of it
loads a record at a time, and the protocol's fan-outs are wide: a `presence_subscribe` may name
100 users, three records each (300 loads); a broadcast reads every member of a room (100 users
by default) and each of their sessions."""


def node_of(conn: ConnId) -> int:
    return conn >> CONN_BITS


def first_conn(node: int) -> ConnId:
    return node << CONN_BITS


@frozen
class Load:
    """Read these keys, and these sessions' outboxes."""

    keys: tuple[str, ...]
    outboxes: tuple[str, ...]


@frozen
class Commit:
    transaction: Transaction


Loaded = tuple[dict[str, Versioned], dict[str, OutboxState | None]]
Request = Load | Commit
Reply = Loaded | Outcome


class RerunDiverged(AssertionError):
    """An event whose commit applied came to another transaction when run again: a bug (its
    inputs changed between the runs), which would apply a second time what it does."""

    def __init__(self, rerun: Transaction, committed: Transaction | None) -> None:
        super().__init__(f"the rerun of a committed event came to {rerun}, not {committed}")


class Unavailable(Exception):
    """The event was not applied: its commits kept conflicting, or it needed more loads than
    any event does. Nothing of it happened; the client may send it again."""


@define(eq=False)
class Node:
    """Runs events against a `NodeStore` (the switchboard's store) and its backend."""

    store: NodeStore
    tokens: TokenTape
    """The switchboard's tokens: an event keeps those it drew while it waits (`_ask`)."""

    def run(self, event: Callable[[], list[Action]]) -> Generator[Request, Reply, list[Action]]:
        """Run `event` (a call into the switchboard) until it commits; yields what it needs of
        the backend and is sent the answers.

        Several events may be in flight at once, each suspended at a request while the others
        run (`_ask`), under three rules (`Pipeline` keeps them): two events of one connection
        are never in flight together, nor one that changes more than its own connection's state
        with any other (`Runnable.exclusive`); and an event whose commit applied is run again
        right after the reply, before anything else loaded is installed, so that its rerun
        finds every record it read as its first run did (the commit checked their versions)."""
        store = self.store
        conflicts = loads = 0
        loaded_now: set[str] = set()
        """Keys loaded for this event: a conflict on one of them is contention (another node
        changed it meanwhile), which `MAX_CONFLICTS` bounds; a conflict on a key the cache
        held from before is a stale copy found, which the next load replaces (`MAX_LOADS`)."""
        try:
            while True:
                try:
                    return event()
                except NeedsCommit as ready:
                    if store.outcome is not None:
                        raise RerunDiverged(ready.transaction, store.pending) from None
                    outcome = yield from self._ask(Commit(ready.transaction))
                    assert isinstance(outcome, Committed | Conflict | Overflow)
                    if isinstance(outcome, Committed):
                        store.outcome = outcome
                    elif isinstance(outcome, Overflow):
                        store.overflowing |= frozenset(outcome.session_ids)
                    elif any(key.startswith("timer:") for key in outcome.keys):
                        self._abandon()  # the timer fired elsewhere, or was disarmed: void
                        return []
                    else:
                        if outcome.keys & loaded_now:
                            conflicts += 1
                        if conflicts > MAX_CONFLICTS:
                            raise Unavailable(f"conflicts on {sorted(outcome.keys)}") from None
                        store.evict(outcome.keys, ready.transaction.reads)
                except Missing as miss:
                    loads += 1
                    if loads > MAX_LOADS:
                        raise Unavailable(f"{loads} loads, the last {miss.key}") from None
                    request = self._load(miss.key)
                    loaded_now.update(request.keys, (f"outbox:{s}" for s in request.outboxes))
                    loaded = yield from self._ask(request)
                    assert isinstance(loaded, tuple)
                    store.install(*loaded)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """The event is given up: nothing of it stays, not even the tokens it drew."""
        self.store.abandon()
        self.tokens.rewind(keep=False)

    def _ask(self, request: Request) -> Generator[Request, Reply, Reply]:
        """Yield `request`, with the event's state out of the store and the tokens it drew out
        of the switchboard meanwhile (other events run), back in when it goes on (or is
        closed: given up)."""
        suspended, drawn = self.store.suspend(), self.tokens.drawn
        self.tokens.drawn = []
        try:
            reply = yield request
        finally:
            self.store.resume(suspended)
            self.tokens.drawn = drawn
        return reply

    def _load(self, key: tuple[str, str]) -> Load:
        """What to load for a key found missing: a session comes with its outbox."""
        kind, name = key
        if kind in ("session", "outbox"):
            return Load((key_name(("session", name)),), (name,))
        return Load((key_name(key),), ())


@frozen
class Wake:
    """Tell node `node` that `conn`'s session has frame `seq` in its outbox: `frame`, which the
    node writes at once if it is next in line (no read from the outbox); b"" if it is not
    carried (the node reads it)."""

    node: int
    conn: ConnId
    session_id: str
    seq: int
    frame: bytes = b""


@frozen
class Fetch:
    """Read `session_id`'s frames after `after_seq` from its outbox, for `conn`
    (`Gateway.fetched`)."""

    conn: ConnId
    session_id: str
    after_seq: int


@frozen
class Forward:
    """An action for a connection another node holds (a takeover's close)."""

    node: int
    action: Action


@define(eq=False)
class Gateway:
    """This node's connections that carry a session, and the last `seq` written to each."""

    node: int
    written: dict[ConnId, tuple[str, int]] = field(factory=dict)
    """Per connection: its session, and the last `seq` written to it."""

    def local(self, conn: ConnId) -> bool:
        return node_of(conn) == self.node

    def route(self, actions: list[Action]) -> list[Action | Wake | Fetch | Forward]:
        """What this node does with an event's actions: frames in order to its connections (or
        a fetch to fill a gap first), wake-ups and forwards for the other nodes'."""
        routed: list[Action | Wake | Fetch | Forward] = []
        for action in actions:
            if isinstance(action, Numbered):
                conn = action.conn
                if conn is None:
                    continue  # held in its outbox until the session resumes
                if not self.local(conn):
                    wake = Wake(node_of(conn), conn, action.session_id, action.seq, action.frame)
                    routed.append(wake)
                    continue
                routed += self.numbered(conn, action.session_id, action.seq, action.frame)
            elif isinstance(action, ReplayAfter):
                self.written[action.conn] = (action.session_id, action.last_seq)
                routed.append(Fetch(action.conn, action.session_id, action.last_seq))
            elif isinstance(action, Send | Close) and not self.local(action.conn):
                routed.append(Forward(node_of(action.conn), action))
            else:
                if isinstance(action, Close):
                    self.written.pop(action.conn, None)
                routed.append(action)
        return routed

    def numbered(self, conn: ConnId, session_id: str, seq: int, frame: bytes) -> list[Send | Fetch]:
        """Frame `seq` of the session on `conn` is committed: written if it is the next one;
        after a gap, a fetch of what is missing (it brings this one too)."""
        carried = self.written.get(conn)
        if carried is None or carried[0] != session_id:
            carried = (session_id, 0)  # a new session: its first frame is 1
        last = carried[1]
        if seq <= last:
            return []  # written already, by a fetch
        if seq == last + 1:
            self.written[conn] = (session_id, seq)
            return [Send(conn, frame)]
        self.written[conn] = carried
        return [Fetch(conn, session_id, last)]

    def woken(self, wake: Wake) -> list[Send | Fetch]:
        """Another node committed frame `wake.seq` for the session on `wake.conn`: written if it
        came with the wake-up and is next in line; else a fetch of those not written."""
        carried = self.written.get(wake.conn)
        if carried is None or carried[0] != wake.session_id or wake.seq <= carried[1]:
            return []
        if wake.frame and wake.seq == carried[1] + 1:
            self.written[wake.conn] = (wake.session_id, wake.seq)
            return [Send(wake.conn, wake.frame)]
        return [Fetch(wake.conn, wake.session_id, carried[1])]

    def fetched(self, fetch: Fetch, frames: list[tuple[int, bytes]]) -> list[Send]:
        """Write what a fetch read that is still next in line (another fetch may have won)."""
        carried = self.written.get(fetch.conn)
        if carried is None or carried[0] != fetch.session_id:
            return []
        last = carried[1]
        sends = []
        for seq, frame in frames:
            if seq == last + 1:
                sends.append(Send(fetch.conn, with_seq(frame, seq)))
                last = seq
        self.written[fetch.conn] = (fetch.session_id, last)
        return sends

    def closed(self, conn: ConnId) -> None:
        """The connection is gone."""
        self.written.pop(conn, None)


class Runnable(Protocol):
    """An event for a `Pipeline`: a call into the switchboard, and what it may run beside."""

    @property
    def run(self) -> Callable[[], list[Action]]: ...

    @property
    def conn(self) -> ConnId | None:
        """The connection it comes from, if any: its events run one at a time, in order."""

    @property
    def exclusive(self) -> bool:
        """Whether it must run alone: it may read or change what other events read outside
        the store, which no commit checks (the switchboard's table of connections, its sign-in
        throttle: a `hello` may take another connection's session over; a timer may close a
        connection). An event that reads and changes only its own connection's entry (a
        message on a connection that carries a session, a connection opened or lost) runs
        beside others, after its connection's earlier events."""


E = TypeVar("E", bound=Runnable)


@frozen
class Finished(Generic[E]):
    """An event run to its end: its actions, or why it was not applied (`Unavailable`, or
    `ClusterUnavailable` from whoever serves the pipeline's requests)."""

    event: E
    actions: list[Action]
    error: Exception | None = None


@define(eq=False)
class _Running(Generic[E]):
    event: E
    steps: Generator[Request, Reply, list[Action]]
    request: Request
    sent: bool = False
    """Whether `request` has been handed out (`commits`, `loads`) and awaits its answer."""


@define(eq=False)
class Pipeline(Generic[E]):
    """Many events in flight on one node, so that a round trip to the backend serves them all:
    their commits go as one batch (`Backend.commit` applies it in order, each transaction on
    its own), their loads as one. Events are taken in order (`offer`) and kept to `Node.run`'s
    rules: an exclusive event runs alone, and a connection's events run one at a time, in
    order, while other connections' go on.

    A round, for whoever drives it: `commits()` sent as one batch and the outcomes given to
    `committed()`, then `loads()` read and given to `loaded()`; each returns the events that
    finished. Order matters there: the committed events are run again in `committed()`, before
    anything loaded is installed."""

    node: Node
    max_events: int
    """Events in flight and held behind another of their connection, at most."""
    _running: list[_Running[E]] = field(factory=list)
    _held: dict[ConnId, deque[E]] = field(factory=dict)
    """Per connection, its events waiting for the one in flight."""
    _holding: int = 0
    _conns: set[ConnId] = field(factory=set)
    """The connections with an event in flight (and maybe more held)."""

    @property
    def idle(self) -> bool:
        return not self._running and not self._holding

    def offer(self, event: E) -> tuple[bool, list[Finished[E]]]:
        """Take `event` if it may start now or wait behind its connection's: (False, []) if
        not (the caller offers it again after a round, and nothing after it meanwhile); the
        events that finished at once (without a request to the backend)."""
        if event.exclusive:
            if not self.idle:
                return False, []
            return True, self._start(event)
        if self._alone or len(self._running) + self._holding >= self.max_events:
            return False, []
        conn = event.conn
        if conn is not None and conn in self._conns:
            self._held.setdefault(conn, deque()).append(event)
            self._holding += 1
            return True, []
        return True, self._start(event)

    def commits(self) -> list[Transaction]:
        """The transactions of the events ready to commit, in order: one batch."""
        return [
            running.request.transaction
            for running in self._running
            if isinstance(running.request, Commit) and self._send(running)
        ]

    def committed(self, outcomes: Sequence[Outcome]) -> list[Finished[E]]:
        """The batch's outcomes, in its order. The events whose commit applied run again first,
        in order, then those that conflicted or overflowed."""
        waiting = [r for r in self._running if r.sent and isinstance(r.request, Commit)]
        assert len(waiting) == len(outcomes), "one outcome per transaction of the batch"
        answered: list[tuple[_Running[E], Reply]] = list(zip(waiting, outcomes, strict=True))
        answered.sort(key=lambda pair: not isinstance(pair[1], Committed))  # stable
        return self._answer(answered)

    def loads(self) -> Load | None:
        """Every key and outbox the events waiting for a load need, in one request."""
        keys: dict[str, None] = {}
        outboxes: dict[str, None] = {}
        for running in self._running:
            if isinstance(running.request, Load) and self._send(running):
                keys.update(dict.fromkeys(running.request.keys))
                outboxes.update(dict.fromkeys(running.request.outboxes))
        return Load(tuple(keys), tuple(outboxes)) if keys or outboxes else None

    def loaded(self, reply: Loaded) -> list[Finished[E]]:
        """The answer to `loads()`: each waiting event gets what it asked for."""
        records, outboxes = reply
        answered: list[tuple[_Running[E], Reply]] = []
        for running in self._running:
            request = running.request
            if running.sent and isinstance(request, Load):
                answered.append(
                    (
                        running,
                        (
                            {key: records[key] for key in request.keys},
                            {sid: outboxes[sid] for sid in request.outboxes},
                        ),
                    )
                )
        return self._answer(answered)

    def failed(self, error: Exception) -> list[Finished[E]]:
        """The requests handed out got no answer: their events are given up (`error`)."""
        given_up = [running for running in self._running if running.sent]
        self._running = [running for running in self._running if not running.sent]
        finished: list[Finished[E]] = []
        for running in given_up:
            running.steps.close()  # the event abandons what it did
            finished += self._finished(Finished(running.event, [], error))
        return finished

    # -------------------------------------------------------------------------------------------

    @property
    def _alone(self) -> bool:
        """Whether an exclusive event is in flight: it started alone, and nothing may start
        beside it."""
        return bool(self._running) and self._running[0].event.exclusive

    @staticmethod
    def _send(running: _Running[E]) -> bool:
        if running.sent:
            return False
        running.sent = True
        return True

    def _start(self, event: E) -> list[Finished[E]]:
        if event.conn is not None:
            self._conns.add(event.conn)
        return self._step(event, self.node.run(event.run), None)

    def _answer(self, answered: list[tuple[_Running[E], Reply]]) -> list[Finished[E]]:
        done = {id(running) for running, _ in answered}
        self._running = [running for running in self._running if id(running) not in done]
        finished: list[Finished[E]] = []
        for running, reply in answered:
            finished += self._step(running.event, running.steps, reply)
        return finished

    def _step(
        self,
        event: E,
        steps: Generator[Request, Reply, list[Action]],
        reply: Reply | None,
    ) -> list[Finished[E]]:
        """Advance `event` with `reply` (None: start it) to its next request, or to its end
        (then start the next event of its connection)."""
        try:
            request = steps.send(reply)  # type: ignore[arg-type]  # None starts a generator
        except StopIteration as done:
            return self._finished(Finished(event, done.value))
        except (Unavailable, RerunDiverged) as failure:
            return self._finished(Finished(event, [], failure))
        self._running.append(_Running(event, steps, request))
        return []

    def _finished(self, finished: Finished[E]) -> list[Finished[E]]:
        """The event is over: its connection's next event starts, if one is held."""
        conn = finished.event.conn
        if conn is None:
            return [finished]
        self._conns.discard(conn)
        held = self._held.get(conn)
        if not held:
            return [finished]
        following = held.popleft()
        self._holding -= 1
        if not held:
            del self._held[conn]
        return [finished, *self._start(following)]
