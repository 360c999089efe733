"""A node's store in cluster mode: a cache of the shared store (`backend.py`) behind the core's
`Store` port, so the core runs unchanged on every node.

The core is synchronous and reads no I/O; the backend is a network away. They meet through the
core's own transactions (docs/decisions/0010-events-as-transactions.md), run twice:

1. The event runs on what the cache holds. A lookup of a key the cache does not know raises
   `Missing`: the event is rolled back, the node loads the key and runs it again. When the
   event reaches its commit, the store turns what it did into a backend `Transaction` (what it
   read with versions, what it wrote, its outbox operations and deliveries) and raises
   `NeedsCommit`, a `Missing`: the event is rolled back once more, and the node commits the
   transaction.
2. Committed, the event runs again, identically (the node runs one event at a time, and its
   tokens are replayed: `TokenTape`), and this time its commit stands: the cache takes the
   versions the backend gave, and each delivery comes out `Numbered` with the `seq` the backend
   gave it. A conflict instead evicts the stale keys and runs the event from the start;
   an overflow makes the rerun end the overflowing sessions first (`Overflow`, as locally).

A session's sequence is not in its record here but in its outbox in the backend: a resume's
check and an `ack`'s read the outbox as loaded for the event (`outbox_states`, dropped once it
commits), and change it by outbox operations whose preconditions the backend checks again.

Which keys need reading: a lookup is a read (its version is checked at commit), and so is a
record the event changes, which it read first. A key the event only writes without reading is
written blind: a new session and its tokens (random ids), the status watchers were told, when
a user was last seen; anything else not known raises `Missing` first, so no record is made or
overwritten on a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson
from attrs import define, field, frozen

from callbox.cluster.backend import (
    Acknowledge,
    Attach,
    CloseOutbox,
    Committed,
    Detach,
    OpenOutbox,
    OutboxOp,
    OutboxState,
    Transaction,
    Versioned,
)
from callbox.codec import with_seq
from callbox.core.actions import (
    Action,
    CancelTimer,
    CloseCall,
    ConnId,
    DurationCapTimer,
    ExpiryWarningTimer,
    GraceTimer,
    Numbered,
    ReplayAfter,
    RingTimer,
    StartTimer,
    TimerKey,
)
from callbox.core.calls import Call
from callbox.core.encoding import decode_record, encode_record
from callbox.core.outbox import Delivery
from callbox.core.presence import LastSeen
from callbox.core.rooms import Room
from callbox.core.sessions import Session
from callbox.core.store import Missing, Overflow, RecordKey, TrackingStore, User
from callbox.messages import UserStatus

BLIND_WRITES: Final = frozenset({"session", "token", "presence", "last_seen"})
"""Kinds an event may write without having read them (see the module docstring)."""
NEW_IDS: Final = frozenset({"session", "token"})
"""Kinds whose keys are random ids drawn by the event that makes them."""

SEQUENCE_FIELDS: Final = {
    "next_seq": 1,
    "last_cseq": 0,
    "replay": None,
    "replay_held": 0,
    "unsent_from": 0,
}
"""A session's fields that live in its outbox, not its record: a session record is stored with
these at their defaults, and a delivery never changes the record."""


class NeedsCommit(Missing):
    """The event is ready to commit: the node commits `transaction`, then runs it again."""

    def __init__(self, transaction: Transaction) -> None:
        Exception.__init__(self, "the event's transaction is ready to commit")
        self.key = ("transaction", "")
        self.transaction = transaction


def timer_name(key: TimerKey) -> str | None:
    """The name a timer of the cluster has in the store; None for one of a connection, which
    dies with its node (`HelloTimer`, `HelloDelayTimer`) or is armed again on a resume
    (`IceRefreshTimer`). Ids hold no spaces (schemas/common.json)."""
    match key:
        case RingTimer(call_id, user_id):
            return f"ring {call_id} {user_id}"
        case ExpiryWarningTimer(call_id):
            return f"warn {call_id}"
        case DurationCapTimer(call_id):
            return f"cap {call_id}"
        case GraceTimer(session_id):
            return f"grace {session_id}"
    return None


def timer_of_name(name: str) -> TimerKey:
    kind, _, rest = name.partition(" ")
    match kind:
        case "ring":
            call_id, _, user_id = rest.partition(" ")
            return RingTimer(call_id, user_id)
        case "warn":
            return ExpiryWarningTimer(rest)
        case "cap":
            return DurationCapTimer(rest)
        case "grace":
            return GraceTimer(rest)
    raise ValueError(f"no such timer: {name!r}")


def cluster_timers(actions: list[Action | Delivery]) -> dict[str, int | None]:
    """The timers of the cluster an event armed (deadline, cluster ms) or disarmed (None).

    A call that ends disarms its expiry warning and duration cap: the core cancels them by
    closing the call's nursery (`CloseCall`), not one by one, and in the store they would stay
    until their deadline (an hour by default) for a node to fire them for nothing. (Ring
    timeouts are cancelled one by one; one of an invitee still ringing when the call ended
    goes at its deadline, within the ring timeout.)"""
    timers: dict[str, int | None] = {}
    for action in actions:
        if isinstance(action, CloseCall):
            # `timer_name` of its ExpiryWarningTimer and DurationCapTimer
            timers[f"warn {action.call_id}"] = timers[f"cap {action.call_id}"] = None
        elif isinstance(action, StartTimer | CancelTimer):
            name = timer_name(action.key)
            if name is not None:
                deadline = action.deadline if isinstance(action, StartTimer) else None
                timers[name] = None if deadline is None else round(deadline * 1000)
    return timers


def key_name(key: RecordKey) -> str:
    return f"{key[0]}:{key[1]}"


def key_of_name(name: str) -> RecordKey:
    kind, _, key = name.partition(":")
    return (kind, key)


@frozen
class SuspendedEvent:
    """What an event waiting for the backend keeps of its earlier runs (`NodeStore.suspend`)."""

    outbox_states: dict[str, OutboxState]
    overflowing: frozenset[str]
    pending: Transaction | None
    outcome: Committed | None
    failed_reads: dict[RecordKey, int]


@define(eq=False)
class NodeStore(TrackingStore):
    """The `Store` of a node: what it has loaded of the shared store, and one event's
    transaction on top (see the module docstring)."""

    seen: LastSeen = field(factory=lambda: LastSeen(capacity=1 << 62))
    """Forgetting is the shared store's (a key's expiry), not the cache's."""
    known: set[RecordKey] = field(factory=set, init=False)
    """Keys whose version the cache knows (their record, or that they are absent)."""
    outbox_states: dict[str, OutboxState] = field(factory=dict, init=False)
    """Outboxes loaded for the event being handled."""
    overflowing: frozenset[str] = field(default=frozenset(), init=False)
    """Sessions the backend said the event's deliveries overflow: its rerun ends them."""
    pending: Transaction | None = field(default=None, init=False)
    """The transaction the event came to, once it has."""
    outcome: Committed | None = field(default=None, init=False)
    """The backend's answer to `pending`, once committed: the rerun then stands."""
    node_died: bool = field(default=False, init=False)
    """Set by the node before it detaches the sessions of a node that died: what that node
    wrote of their frames is unknown, so every frame held counts as unread (`Detach`)."""
    firing: tuple[str, int] | None = field(default=None, init=False)
    """Set by the node before it runs a timer of the cluster's: (its name, its deadline in
    cluster ms), which the event's commit claims (`Transaction.fired`)."""
    _ops: list[OutboxOp] = field(factory=list, init=False)
    _blind_deletes: set[RecordKey] = field(factory=set, init=False)
    """Tokens the event drops that the cache does not hold (see `drop_token`)."""
    _failed_reads: dict[RecordKey, int] = field(factory=dict, init=False)
    """What the event's runs rolled back had read: its commit checks them too, so a run that
    failed on a stale cache (an impossible state, taken for a bug: an `internal` answer) ends
    in a conflict and a rerun on fresh records, not in that answer."""
    _opened: list[str] = field(factory=list, init=False)
    """Sessions the event started: once it commits, their node's gateway is told to carry
    them (`ReplayAfter` from 0), before anything is numbered for them."""

    # Loading and evicting ------------------------------------------------------------------

    def install(
        self, loaded: dict[str, Versioned], outboxes: dict[str, OutboxState | None]
    ) -> None:
        """Take what the node loaded: records (replacing what the cache held of them) and the
        outboxes of sessions, for the event being handled."""
        for name, versioned in loaded.items():
            kind, key = key_of_name(name)
            self._drop(kind, key)
            self.known.add((kind, key))
            self.versions[(kind, key)] = versioned.version
            if versioned.data is not None:
                self._put(kind, key, versioned.data)
        for session_id, state in outboxes.items():
            if state is None:
                continue
            self.outbox_states[session_id] = state
            session = self.sessions.get(session_id)
            if session is not None:
                session.next_seq, session.last_cseq = state.next_seq, state.last_cseq

    def evict(self, names: frozenset[str], read: Mapping[str, int]) -> None:
        """Forget the keys a conflict found stale (`read`: the versions the transaction read),
        so that they are loaded again when next looked up; but not one the cache holds a newer
        version of by now (another event's commit, rerun meanwhile): an event waiting to
        commit may have read it, and if it commits, its rerun must find it as it was. A failed
        outbox precondition ("outbox:<id>") drops the outbox loaded for the event: its rerun
        loads it again, with the session's record."""
        for name in names:
            kind, key = key_of_name(name)
            if kind == "outbox":
                self.outbox_states.pop(key, None)
                continue
            if name in read and self.versions.get((kind, key)) != read[name]:
                continue
            self._drop(kind, key)
            self.known.discard((kind, key))
            self.versions.pop((kind, key), None)
            self._failed_reads.pop((kind, key), None)  # read again when run again

    def forget_everything(self) -> None:
        """The store lost everything (restarted empty): so does the cache."""
        for mapping in self._mappings.values():
            mapping.clear()
        self.seen = LastSeen(capacity=1 << 62)
        self.known.clear()
        self.versions.clear()
        self.abandon()

    def _put(self, kind: str, key: str, data: bytes) -> None:
        if kind == "session":
            session = decode_record(Session, data)
            self.sessions[key] = session
            for token in (session.resume_token, session.previous_token):
                if token is not None:  # known to name it, not at which version: not `known`
                    self.by_resume_token[token] = key
        elif kind == "user":
            self.users[key] = decode_record(User, data)
        elif kind == "call":
            self.calls[key] = decode_record(Call, data)
        elif kind == "room":
            self.rooms[key] = decode_record(Room, data)
        elif kind == "token":
            self.by_resume_token[key] = data.decode()
        elif kind == "watchers":
            self.watching[key] = dict.fromkeys(orjson.loads(data))
        elif kind == "presence":
            self.told[key] = orjson.loads(data)
        elif kind == "last_seen":
            self.seen.record(key, int(data))
        else:
            raise ValueError(f"no such kind of record: {kind}")

    def _drop(self, kind: str, key: str) -> None:
        if kind == "last_seen":
            self.seen.restore(key, None)
        else:
            self._mappings[kind].pop(key, None)

    def _encoded(self, kind: str, key: str) -> bytes:
        if kind == "session":
            session = self.sessions[key].copy()
            for name, default in SEQUENCE_FIELDS.items():
                setattr(session, name, default)
            return encode_record(session)
        if kind in ("user", "call", "room"):
            return encode_record(self._mappings[kind][key])
        if kind == "token":
            return self.by_resume_token[key].encode()
        if kind == "watchers":
            return orjson.dumps(list(self.watching[key]))
        if kind == "presence":
            return orjson.dumps(self.told[key])
        seen = self.seen.get(key)
        assert seen is not None
        return str(seen).encode()

    # Lookups: a key not known is `Missing` ---------------------------------------------------

    def looked_up(self, key: RecordKey) -> None:
        if key not in self.known:
            raise Missing(key)
        super().looked_up(key)

    def _outbox(self, session: Session) -> OutboxState:
        state = self.outbox_states.get(session.session_id)
        if state is None:
            raise Missing(("outbox", session.session_id))
        return state

    def devices(self, user_id: str) -> list[Session]:
        user = self.user(user_id)
        for session_id in () if user is None else user.sessions:
            self.looked_up(("session", session_id))
        return super().devices(user_id)

    def _user_to_change(self, user_id: str) -> User:
        self.looked_up(("user", user_id))
        return super()._user_to_change(user_id)

    def remove_session(self, session: Session) -> User:
        self.looked_up(("user", session.user_id))
        user = super().remove_session(session)
        self._ops.append(CloseOutbox(session.session_id))
        return user

    def add_session(self, session: Session) -> None:
        super().add_session(session)
        self._opened.append(session.session_id)

    def remove_call_of_user(self, user_id: str, call_id: str) -> None:
        self.looked_up(("user", user_id))
        super().remove_call_of_user(user_id, call_id)

    def forget_user_if_idle(self, user_id: str) -> None:
        self.looked_up(("user", user_id))
        super().forget_user_if_idle(user_id)

    def add_watcher(self, user_id: str, session: Session, told: UserStatus) -> None:
        self.looked_up(("watchers", user_id))
        super().add_watcher(user_id, session, told)

    def remove_watcher(self, user_id: str, session: Session) -> None:
        self.looked_up(("watchers", user_id))
        self.looked_up(("presence", user_id))
        super().remove_watcher(user_id, session)

    def drop_token(self, token: str) -> None:
        """A token the session names may be missing from the cache (evicted after a conflict,
        while its session was not): it is deleted blind."""
        if token in self.by_resume_token:
            super().drop_token(token)
        else:
            self._blind_deletes.add(("token", token))

    def _note(self, kind: str, key: str) -> None:
        """Journal an entry the event changes. A known key's version is checked at commit;
        a new random id (a session, a token) is taken to be absent, which the commit checks;
        the other kinds of `BLIND_WRITES` are written unchecked, anything else is loaded."""
        if (kind, key) in self.known:
            super()._note(kind, key)
            return
        if kind not in BLIND_WRITES:
            raise Missing((kind, key))
        if kind in NEW_IDS and key not in self._mappings[kind]:
            self.known.add((kind, key))
            self.versions[(kind, key)] = 0
            super()._note(kind, key)
            return
        assert self._changing, f"a read-only event changes {kind} {key!r}"
        super(TrackingStore, self)._note(kind, key)

    def record_last_seen(self, user_id: str, unix_ms: int) -> None:
        assert self._changing, f"a read-only event records when {user_id} was last seen"
        super(TrackingStore, self).record_last_seen(user_id, unix_ms)

    # A session's sequence, in its outbox -------------------------------------------------------

    def can_replay_after(self, session: Session, last_seq: int) -> bool:
        return self._outbox(session).can_replay_after(last_seq)

    def resume_replay(self, session: Session, last_seq: int) -> list[Action]:
        assert session.conn is not None
        self._ops.append(Attach(session.session_id, session.conn, last_seq))
        return [ReplayAfter(session.conn, session.session_id, last_seq)]

    def last_seq_sent(self, session: Session) -> int:
        return self._outbox(session).next_seq - 1

    def acknowledge(self, session: Session, last_seq: int) -> None:
        self._ops.append(Acknowledge(session.session_id, last_seq))

    def detach(self, session: Session, grace_deadline: float) -> None:
        session.conn = None
        session.grace_deadline = grace_deadline
        self._ops.append(Detach(session.session_id, 0 if self.node_died else None))

    # The transaction ---------------------------------------------------------------------------

    @property
    def reads_checked(self) -> bool:
        """Checked by the event's commit, or nothing read by the runs rolled back."""
        return self.outcome is not None or not self._failed_reads

    def rollback(self) -> None:
        for key, version in self._reads.items():
            self._failed_reads.setdefault(key, version)
        super().rollback()
        self._ops, self._opened = [], []
        self._blind_deletes = set()

    def commit(
        self, actions: list[Action | Delivery], applied: tuple[str, int] | None = None
    ) -> list[Action]:
        """Raises `NeedsCommit` the first time an event comes here; once the node has committed
        what it raised, the same event's rerun comes here again, and stands."""
        deliveries = [action for action in actions if type(action) is tuple]
        if self.overflowing:
            hit = {sid for sid, _ in deliveries} & self.overflowing
            if hit:
                raise Overflow(sorted(hit))
        writes, deletes = self._changes()
        deletes |= self._blind_deletes
        started = [sid for sid in self._opened if sid in self.sessions]
        reads = {
            key: version
            for key, version in self._failed_reads.items()
            if key in self.known and self.versions[key] == version  # else loaded again since
        }
        reads.update(self._reads)
        transaction = Transaction(
            reads={key_name(key): version for key, version in reads.items()},
            writes={key_name(key): self._encoded(*key) for key in writes},
            deletes=frozenset(key_name(key) for key in deletes),
            outbox_ops=self._outbox_ops(started),
            deliveries=tuple(deliveries),
            applied=applied,
            fired=self.firing,
            timers=cluster_timers(actions),
        )
        if not (
            writes
            or deletes
            or transaction.outbox_ops
            or deliveries
            or applied
            or self._failed_reads
            or transaction.fired
            or transaction.timers
        ):
            self._settled()  # read and changed nothing to keep: nothing to commit
            return [action for action in actions if type(action) is not tuple]  # type: ignore[misc]
        outcome = self.outcome
        if outcome is None:
            self.pending = transaction
            raise NeedsCommit(transaction)
        if transaction != self.pending:  # a bug: the node says so (`RerunDiverged`)
            raise NeedsCommit(transaction)
        for key in writes | deletes:
            self.known.add(key)
            self.versions[key] = outcome.version if key in writes else 0
        if applied is not None and applied[0] in self.sessions:
            self.sessions[applied[0]].last_cseq = applied[1]
        done: list[Action] = [
            ReplayAfter(self._conn_of(sid), sid, 0) for sid in started
        ]  # first: the gateway carries them before anything is numbered for them
        numbers = zip(outcome.seqs, outcome.conns, strict=True)
        for action in actions:
            if type(action) is tuple:
                session_id, frame = action
                seq, conn = next(numbers)
                done.append(Numbered(session_id, conn, seq, with_seq(frame, seq)))
            else:
                done.append(action)  # type: ignore[arg-type]
        self._settled()
        return done

    def _conn_of(self, session_id: str) -> ConnId:
        conn = self.sessions[session_id].conn
        assert conn is not None, f"session {session_id} started without a connection"
        return conn

    def _outbox_ops(self, started: list[str]) -> tuple[OutboxOp, ...]:
        """The event's outbox operations, the outboxes of the sessions it started first (with
        the connections they were started on). A session started and ended within the event
        has none."""
        ended_at_once = set(self._opened) - set(started)
        opened: list[OutboxOp] = []
        for sid in started:
            session = self.sessions[sid]
            opened.append(
                OpenOutbox(sid, self._conn_of(sid), session.replay_messages, session.replay_bytes)
            )
        return (
            *opened,
            *(op for op in self._ops if op.session_id not in ended_at_once),
        )

    def abandon(self) -> None:
        """The event is given up (its changes were rolled back): nothing of it stays."""
        self._settled()

    def suspend(self) -> SuspendedEvent:
        """Take out what the event being handled keeps between its runs (it has just been
        rolled back, waiting for a load or a commit), leaving the store free for another event's
        run meanwhile; `resume` puts it back. Everything else of an event lives only within a
        run."""
        suspended = SuspendedEvent(
            self.outbox_states, self.overflowing, self.pending, self.outcome, self._failed_reads
        )
        self.outbox_states, self._failed_reads = {}, {}
        self.overflowing, self.pending, self.outcome = frozenset(), None, None
        self.firing, self.node_died = None, False  # set by the event at the start of each run
        return suspended

    def resume(self, suspended: SuspendedEvent) -> None:
        """Carry on with a suspended event (the store holds no other one's state now)."""
        self.outbox_states, self.overflowing = suspended.outbox_states, suspended.overflowing
        self.pending, self.outcome = suspended.pending, suspended.outcome
        self._failed_reads = suspended.failed_reads

    def _settled(self) -> None:
        """The event is over: nothing of it is kept for a rollback or a rerun."""
        self._forget_event()
        self._reads, self._read_values, self._ops, self._opened = {}, [], [], []
        self._failed_reads, self._blind_deletes = {}, set()
        self.pending = self.outcome = self.firing = None
        self.node_died = False
        self.overflowing = frozenset()
        self.outbox_states.clear()
