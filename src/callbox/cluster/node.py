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

from collections.abc import Callable, Generator
from typing import Final

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


class Unavailable(Exception):
    """The event was not applied: its commits kept conflicting, or it needed more loads than
    any event does. Nothing of it happened; the client may send it again."""


@define(eq=False)
class Node:
    """Runs events against a `NodeStore` (the switchboard's store) and its backend."""

    store: NodeStore

    def run(self, event: Callable[[], list[Action]]) -> Generator[Request, Reply, list[Action]]:
        """Run `event` (a call into the switchboard) until it commits; yields what it needs of
        the backend and is sent the answers. Events must be run one at a time: a rerun must
        find the cache as its first run left it."""
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
                    outcome = yield Commit(ready.transaction)
                    assert isinstance(outcome, Committed | Conflict | Overflow)
                    if isinstance(outcome, Committed):
                        store.outcome = outcome
                    elif isinstance(outcome, Overflow):
                        store.overflowing |= frozenset(outcome.session_ids)
                    elif any(key.startswith("timer:") for key in outcome.keys):
                        store.abandon()  # the timer fired elsewhere, or was disarmed: void
                        return []
                    else:
                        if outcome.keys & loaded_now:
                            conflicts += 1
                        if conflicts > MAX_CONFLICTS:
                            raise Unavailable(f"conflicts on {sorted(outcome.keys)}") from None
                        store.evict(outcome.keys)
                except Missing as miss:
                    loads += 1
                    if loads > MAX_LOADS:
                        raise Unavailable(f"{loads} loads, the last {miss.key}") from None
                    request = self._load(miss.key)
                    loaded_now.update(request.keys, (f"outbox:{s}" for s in request.outboxes))
                    loaded = yield request
                    assert isinstance(loaded, tuple)
                    store.install(*loaded)
        except BaseException:
            store.abandon()
            raise

    def _load(self, key: tuple[str, str]) -> Load:
        """What to load for a key found missing: a session comes with its outbox."""
        kind, name = key
        if kind in ("session", "outbox"):
            return Load((key_name(("session", name)),), (name,))
        return Load((key_name(key),), ())


@frozen
class Wake:
    """Tell node `node` that `conn`'s session has frames up to `seq` in its outbox."""

    node: int
    conn: ConnId
    session_id: str
    seq: int


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
                    routed.append(Wake(node_of(conn), conn, action.session_id, action.seq))
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

    def woken(self, wake: Wake) -> list[Fetch]:
        """Another node committed frames for a session on `wake.conn`: fetch those not written."""
        carried = self.written.get(wake.conn)
        if carried is None or carried[0] != wake.session_id or wake.seq <= carried[1]:
            return []
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
