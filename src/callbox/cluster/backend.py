"""The shared store of a cluster: what every node reads records from and commits events to.

A node keeps a cache of records (`callbox.cluster.node_store`); the backend holds the truth. It
knows records only as opaque bytes under string keys ("session:<id>", "call:<id>", ...), each
with a version, and each session's outbox: the frames sent to it, numbered in its sequence and
held for replay within its budget. One commit is one transaction, applied whole or not at all:

1. **Checks.** Every key the event read must still have the version it read (0: absent), and
   every outbox precondition must hold (a resume's `last_seq` still replayable, an `ack` not
   ahead of what was sent, a client message's `cseq` not applied before). Otherwise the
   outcome is `Conflict` with the keys that failed: the node drops them from its cache and
   runs the event again.
2. **Writes.** Written keys get the transaction's version, one number per commit drawn from a
   counter that only grows, so a key deleted and made again never comes back with a version a
   stale cache could mistake for current (the ABA problem of per-key counters). Deleted keys go.
3. **Outboxes.** Outbox operations apply in order (open, attach, detach, ack, close), then each
   delivery is numbered in its session's sequence and held; the oldest frames make room when a
   budget is passed. A detached session that would have to drop a frame its client cannot have
   read (numbered at or after `unsent_from`) makes the outcome `Overflow`, with nothing applied:
   the node ends those sessions within the event and commits again (`Session.deliver`'s rule).

A batch of transactions commits in order; a later one that read what an earlier one failed to
write fails its checks by itself. A batch carries an id: committed again (a client library's
retry after a lost reply), it returns its first outcomes and changes nothing.

`MemoryBackend` is this contract in a dict, for tests of many nodes with no Redis; the Redis one
must behave identically (tests/cluster/test_backend_contract.py runs the same cases on both).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Final, Protocol

from attrs import define, field, frozen

LAST_SEEN_TTL_MS: Final = 7 * 24 * 3600 * 1000
"""How long the store keeps when a user was last seen ("last_seen:<user>" keys expire then): a
single process remembers the last `LAST_SEEN_REMEMBERED` users instead."""

CONN_BITS: Final = 32
"""A connection id is its node's number shifted by this many bits, plus the node's own count:
unique in the cluster, and naming the node that holds the connection."""

Version = int
"""A key's version: the number of the commit that last wrote it; 0 means absent."""


@frozen
class Versioned:
    version: Version
    data: bytes | None
    """None when absent (version 0)."""


ABSENT = Versioned(0, None)


@frozen
class OutboxState:
    """A session's outbox, as a resume or an `ack` needs to see it."""

    next_seq: int
    """The `seq` the next frame will get."""
    first_held: int
    """The `seq` of the oldest frame held (== `next_seq` when none is)."""
    conn: int | None
    """The connection the session is attached to, on whichever node holds it (None: away)."""
    unsent_from: int
    """While detached: the first `seq` its client cannot have read."""
    last_cseq: int = 0
    """The highest `cseq` of the client's messages applied (`Session.last_cseq`)."""

    def can_replay_after(self, last_seq: int) -> bool:
        return self.first_held - 1 <= last_seq <= self.next_seq - 1


# Outbox operations, applied in a transaction's order before its deliveries.


@frozen
class OpenOutbox:
    """A new session: its outbox starts at `seq` 1, attached to `conn`, with these budgets."""

    session_id: str
    conn: int
    max_messages: int
    max_bytes: int


@frozen
class Attach:
    """The session has a connection again, `conn` (a resume after `last_seq`): the
    precondition is that every frame after `last_seq` is still held."""

    session_id: str
    conn: int
    last_seq: int


@frozen
class Detach:
    """The session lost its connection. `unsent_from`: the first `seq` its client cannot have
    read; None: the next one (the node wrote everything it had). A node that died wrote an
    unknown part: its sessions are detached from their oldest held frame."""

    session_id: str
    unsent_from: int | None = None


@frozen
class Acknowledge:
    """The client has every frame up to `last_seq`: they are dropped. The precondition is
    that `last_seq` is not ahead of the last frame numbered."""

    session_id: str
    last_seq: int


@frozen
class CloseOutbox:
    """The session has ended: its outbox goes."""

    session_id: str


OutboxOp = OpenOutbox | Attach | Detach | Acknowledge | CloseOutbox


@frozen
class Transaction:
    """One event's changes, as the node's cache computed them."""

    reads: Mapping[str, Version]
    """Each key the event looked up, with the version it saw (0: absent)."""
    writes: Mapping[str, bytes] = field(factory=dict)
    deletes: frozenset[str] = frozenset()
    outbox_ops: Sequence[OutboxOp] = ()
    deliveries: Sequence[tuple[str, bytes]] = ()
    """(session id, frame without `seq`), in order."""
    applied: tuple[str, int] | None = None
    """(session id, `cseq`) of the client message the event applied: the precondition is that
    the session's outbox has applied none as high (a message resent after a resume is applied
    once), and it becomes its `last_cseq`."""
    fired: tuple[str, int] | None = None
    """(timer, deadline) of the timer whose firing the event is: the precondition is that the
    timer is still armed for that deadline, and it is disarmed (so it fires once however many
    nodes try: the one that armed it, on time, or another after that one died)."""
    timers: Mapping[str, int | None] = field(factory=dict)
    """Timers the event armed (deadline, cluster ms) or disarmed (None), after `fired`."""


@frozen
class Committed:
    version: Version
    """The version every written key now has."""
    seqs: tuple[int, ...]
    """The `seq` of each delivery, in order."""
    conns: tuple[int | None, ...]
    """The connection each delivery's session is attached to, in order (None: away): what
    the committing node wakes, or writes to if it holds it."""


@frozen
class Conflict:
    keys: frozenset[str]
    """Keys whose version changed, "outbox:<id>" for a failed outbox precondition and
    "timer:<name>" for a timer no longer armed as the event fired it."""


@frozen
class Overflow:
    session_ids: tuple[str, ...]


@frozen
class Expired:
    """The batch reached the store after the time it was allowed to apply by (a node that gave
    up waiting has answered `unavailable`): nothing of it applied, nor ever will."""


Outcome = Committed | Conflict | Overflow | Expired


class ClusterUnavailable(Exception):
    """The store cannot be reached (or refuses work for now: out of memory, a failover). A
    commit that raises it may or may not have applied: committing the same batch id again
    tells which, within the time a batch's outcomes are kept."""

    permanent = False
    """Whether waiting cannot help (a store callbox will not use): a node does not start."""


class Backend(Protocol):
    async def instance(self) -> str:
        """The id of the data the store holds, made by the first node that asks: another one
        means the store lost everything (restarted empty), and every node's cache with it."""
        ...

    async def renew_lease(self, node: int, until_ms: int) -> bool:
        """Node `node` is alive until `until_ms` (cluster ms). Returns whether it still held
        its lease (False: another node found it dead meanwhile and took its sessions)."""
        ...

    async def dead_nodes(self, now_ms: int) -> list[int]:
        """Nodes whose lease ran out before `now_ms`."""
        ...

    async def claim_node(self, node: int) -> list[tuple[str, int]]:
        """Take a dead node's place once: its lease goes, and the sessions attached to its
        connections are returned with those connections (each a session to detach). Only the
        first node to claim it gets them; the others get nothing."""
        ...

    async def overdue(self, before_ms: int, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` armed timers due before `before_ms`, earliest first, with their
        deadlines: those whose node did not fire them (it died)."""
        ...

    async def load(self, keys: Sequence[str]) -> dict[str, Versioned]:
        """The current version and value of each key."""
        ...

    async def record_names(self, kind: str, limit: int) -> list[str]:
        """Up to `limit` keys of records of `kind` ("call:<id>" for "call", ...), in no
        particular order: the admin API's listing, the only reader that scans the store. Each
        read is bounded (a page, `SCAN`-style: never every key at once), and a key written or
        deleted meanwhile may or may not be listed."""
        ...

    async def outboxes(self, session_ids: Sequence[str]) -> dict[str, OutboxState | None]:
        """Each session's outbox (None: it has none)."""
        ...

    async def commit(
        self, batch_id: str, batch: Sequence[Transaction], not_after_ms: int = 0
    ) -> list[Outcome]:
        """Apply `batch` in order, each transaction whole or not at all (see the module); not
        at all, each `Expired`, if the store's clock is past `not_after_ms` (0: no limit)."""
        ...

    async def now_ms(self) -> int:
        """The cluster's clock (Unix ms): what every node's deadlines are measured on."""
        ...

    async def register_node(self) -> int:
        """A node number never given before (from 1): a new node's, for its connection ids."""
        ...

    async def frames_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Up to `limit` held frames with `seq` > `after_seq`, oldest first, each with its
        `seq` (the stored frame has none: a node splices it in)."""
        ...


@define(eq=False)
class _Outbox:
    next_seq: int
    max_messages: int
    max_bytes: int
    frames: deque[bytes] = field(factory=deque)
    held: int = 0
    conn: int | None = None
    unsent_from: int = 1
    last_cseq: int = 0

    def state(self) -> OutboxState:
        first_held = self.next_seq - len(self.frames)
        return OutboxState(self.next_seq, first_held, self.conn, self.unsent_from, self.last_cseq)

    def copy(self) -> _Outbox:
        return _Outbox(
            self.next_seq,
            self.max_messages,
            self.max_bytes,
            self.frames.copy(),
            self.held,
            self.conn,
            self.unsent_from,
            self.last_cseq,
        )

    def hold(self, frame: bytes) -> tuple[int, bool]:
        """Number and hold `frame`, the oldest frames making room past a budget (one frame
        over it alone is held alone). Returns its `seq`, and whether making room dropped a
        frame the detached client cannot have read."""
        seq = self.next_seq
        self.next_seq += 1
        frames = self.frames
        frames.append(frame)
        self.held += len(frame)
        lost_unread = False
        while (self.held > self.max_bytes or len(frames) > self.max_messages) and len(frames) > 1:
            if self.conn is None and self.next_seq - len(frames) >= self.unsent_from:
                lost_unread = True
            self.held -= len(frames.popleft())
        return seq, lost_unread

    def drop_through(self, last_seq: int) -> None:
        first = self.next_seq - len(self.frames)
        for _ in range(max(0, min(last_seq - first + 1, len(self.frames)))):
            self.held -= len(self.frames.popleft())


@define(eq=False)
class MemoryBackend:
    """The backend contract in this process's memory: for tests of many nodes without Redis
    (each node's cache is separate; only this is shared)."""

    records: dict[str, tuple[Version, bytes]] = field(factory=dict)
    outboxes_by_session: dict[str, _Outbox] = field(factory=dict)
    last_version: Version = 0
    batches: dict[str, list[Outcome]] = field(factory=dict)
    """Outcomes by batch id, so a batch committed twice applies once."""
    nodes: int = 0
    """Node numbers given so far."""
    timers: dict[str, int] = field(factory=dict)
    """Armed timers: deadline (cluster ms) by name."""
    leases: dict[int, int] = field(factory=dict)
    """Each live node's lease: until when (cluster ms)."""
    instance_id: str = field(factory=lambda: uuid.uuid4().hex)
    """A test makes another to play a store restarted empty."""

    def load_now(self, keys: Sequence[str]) -> dict[str, Versioned]:
        found = {}
        for key in keys:
            entry = self.records.get(key)
            found[key] = ABSENT if entry is None else Versioned(*entry)
        return found

    def outboxes_now(self, session_ids: Sequence[str]) -> dict[str, OutboxState | None]:
        return {
            sid: (None if (box := self.outboxes_by_session.get(sid)) is None else box.state())
            for sid in session_ids
        }

    def frames_after_now(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        box = self.outboxes_by_session.get(session_id)
        if box is None:
            return []
        first = box.next_seq - len(box.frames)
        held = [(seq, frame) for seq, frame in enumerate(box.frames, first) if seq > after_seq]
        return held[: max(limit, 0)]  # a negative end would count from the end

    def commit_now(
        self, batch_id: str, batch: Sequence[Transaction], not_after_ms: int = 0
    ) -> list[Outcome]:
        done = self.batches.get(batch_id)
        if done is None and 0 < not_after_ms < time.time() * 1000:
            done = self.batches[batch_id] = [Expired() for _ in batch]
        if done is None:
            done = self.batches[batch_id] = [self._apply(txn) for txn in batch]
        return list(done)  # the caller's to change; the kept list stays as it was

    def _apply(self, txn: Transaction) -> Outcome:
        stale = {
            key
            for key, version in txn.reads.items()
            if self.records.get(key, (0, b""))[0] != version
        }
        boxes = self._outboxes_after(txn, stale)
        if txn.fired is not None and self.timers.get(txn.fired[0]) != txn.fired[1]:
            stale.add(f"timer:{txn.fired[0]}")
        if stale:
            return Conflict(frozenset(stale))
        seqs, conns = [], []
        overflowing: dict[str, None] = {}
        for sid, frame in txn.deliveries:
            box = boxes[sid]
            assert box is not None
            seq, lost_unread = box.hold(frame)
            seqs.append(seq)
            conns.append(box.conn)
            if lost_unread:
                overflowing[sid] = None
        if overflowing:
            return Overflow(tuple(overflowing))
        self.last_version += 1
        version = self.last_version
        for key, data in txn.writes.items():
            self.records[key] = (version, data)
        for key in txn.deletes:
            self.records.pop(key, None)
        if txn.fired is not None:
            del self.timers[txn.fired[0]]
        for timer, deadline in txn.timers.items():
            if deadline is None:
                self.timers.pop(timer, None)
            else:
                self.timers[timer] = deadline
        for sid, box in boxes.items():
            if box is None:
                self.outboxes_by_session.pop(sid, None)
            else:
                self.outboxes_by_session[sid] = box
        return Committed(version, tuple(seqs), tuple(conns))

    def _outboxes_after(self, txn: Transaction, stale: set[str]) -> dict[str, _Outbox | None]:
        """Copies of the outboxes `txn` touches, as its operations and its `applied` leave them
        (deliveries not yet held); a failed precondition adds "outbox:<id>" to `stale`."""
        boxes: dict[str, _Outbox | None] = {}

        def box_of(sid: str) -> _Outbox | None:
            if sid not in boxes:
                current = self.outboxes_by_session.get(sid)
                boxes[sid] = None if current is None else current.copy()
            return boxes[sid]

        for op in txn.outbox_ops:
            sid = op.session_id
            box = box_of(sid)
            if isinstance(op, OpenOutbox):
                if box is not None:
                    stale.add(f"outbox:{sid}")
                boxes[sid] = _Outbox(1, op.max_messages, op.max_bytes, conn=op.conn)
            elif box is None:
                stale.add(f"outbox:{sid}")
            elif isinstance(op, CloseOutbox):
                boxes[sid] = None
            elif isinstance(op, Attach):
                if not box.state().can_replay_after(op.last_seq):
                    stale.add(f"outbox:{sid}")
                box.conn = op.conn
            elif isinstance(op, Detach):
                box.conn = None
                box.unsent_from = box.next_seq if op.unsent_from is None else op.unsent_from
            elif op.last_seq > box.next_seq - 1:  # Acknowledge
                stale.add(f"outbox:{sid}")
            else:
                box.drop_through(op.last_seq)
        if txn.applied is not None:
            sid, cseq = txn.applied
            box = box_of(sid)
            if box is not None:  # else the message ended its session (`bye`)
                if cseq <= box.last_cseq:
                    stale.add(f"outbox:{sid}")
                box.last_cseq = cseq
        for sid, _ in txn.deliveries:
            if box_of(sid) is None:  # records name only live sessions: a stale cache
                stale.add(f"outbox:{sid}")
        return boxes

    # The `Backend` protocol, for the shell: the same, awaited.

    async def load(self, keys: Sequence[str]) -> dict[str, Versioned]:
        return self.load_now(keys)

    async def outboxes(self, session_ids: Sequence[str]) -> dict[str, OutboxState | None]:
        return self.outboxes_now(session_ids)

    async def record_names(self, kind: str, limit: int) -> list[str]:
        start = f"{kind}:"
        return [name for name in self.records if name.startswith(start)][:limit]

    async def commit(
        self, batch_id: str, batch: Sequence[Transaction], not_after_ms: int = 0
    ) -> list[Outcome]:
        return self.commit_now(batch_id, batch, not_after_ms)

    async def frames_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        return self.frames_after_now(session_id, after_seq, limit)

    async def now_ms(self) -> int:
        return int(time.time() * 1000)

    async def instance(self) -> str:
        return self.instance_id

    async def renew_lease(self, node: int, until_ms: int) -> bool:
        held = node in self.leases
        self.leases[node] = until_ms
        return held

    async def dead_nodes(self, now_ms: int) -> list[int]:
        return sorted(node for node, until in self.leases.items() if until < now_ms)

    async def claim_node(self, node: int) -> list[tuple[str, int]]:
        if self.leases.pop(node, None) is None:
            return []
        return [
            (sid, box.conn)
            for sid, box in self.outboxes_by_session.items()
            if box.conn is not None and box.conn >> CONN_BITS == node
        ]

    def overdue_now(self, before_ms: int, limit: int) -> list[tuple[str, int]]:
        due = sorted((deadline, timer) for timer, deadline in self.timers.items())
        return [(timer, deadline) for deadline, timer in due if deadline < before_ms][:limit]

    async def overdue(self, before_ms: int, limit: int) -> list[tuple[str, int]]:
        return self.overdue_now(before_ms, limit)

    async def register_node(self) -> int:
        self.nodes += 1
        return self.nodes
