"""The store: every record the core keeps (sessions, users, calls, rooms, watchers, last-seen
times, the resume index), reached only through the `Store` port.

`LocalStore`, plain dicts in this process, is the default and the only one yet: the port is where
a store shared by many nodes goes (docs/decisions/0008-core-layout.md). What is not a record
stays out of it: the connections of this process (`Link`s) belong to the node that holds them.

Records name each other by key, never hold each other: a user lists its sessions' ids, a room
its members' session ids, a call its parties' session ids. So whatever the core reads, it read
through a lookup here, which is what a store shared by many nodes must be able to see.

Each event is a transaction (docs/decisions/0010-events-as-transactions.md): `changing` says the
event may change records, `commit` keeps what it did and numbers what it sends, `rollback` undoes
it. An event that may change records has each record copied at its first lookup, and every
insertion and deletion journaled; an event that only reads (a relay, most of the traffic) pays
nothing for that.
`TrackingStore` also reports each event's read set with versions and its write and delete sets,
and `Missing` is what a lookup raises when the record is not at hand: the event is rolled back
and run again once it is.

Each operation costs the size of what it touches: calls by `call_id`, sessions by id and by resume
token, and per user the sessions and calls it is in. Nothing scans all calls or all users.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, MutableMapping
from typing import Any, Final, Protocol

from attrs import define, field, frozen

from callbox.codec import with_seq
from callbox.core.actions import Action
from callbox.core.calls import Call
from callbox.core.encoding import decode_record, encode_record
from callbox.core.outbox import Delivery
from callbox.core.presence import LastSeen
from callbox.core.records import put_back, shallow_copier, value_of
from callbox.core.rooms import Room
from callbox.core.sessions import NOTHING, Session, add_to, discard_from
from callbox.messages import UserStatus


@define(eq=False)
class User:
    """Everything indexed per user: its sessions (devices) and the calls it is a party of."""

    user_id: str
    sessions: list[str] = field(factory=list)
    """The ids of its sessions, oldest first (a few: `max_sessions_per_user`)."""
    calls: set[str] | frozenset[str] = NOTHING

    def copy(self) -> User:
        copy = _copy_user(self)
        copy.sessions = list(self.sessions)
        if isinstance(self.calls, set):
            copy.calls = set(self.calls)
        return copy


_copy_user = shallow_copier(User)

Record = Session | User | Call | Room
RECORD_KINDS = frozenset({"session", "user", "call", "room"})
RecordKey = tuple[str, str]
"""A record's kind ("session", "user", "call", "room", "token", "watchers", "presence",
"last_seen") and its key within that kind."""


class Overflow(Exception):
    """Committing these deliveries would overflow the replay of sessions away from their
    connection (`Session.deliver`): those sessions must end, within the event, first."""

    def __init__(self, session_ids: list[str]) -> None:
        super().__init__(f"replay overflow: {session_ids}")
        self.session_ids = session_ids


class Missing(Exception):
    """The record under `key` is not at hand: the event is rolled back, and run again once the
    store has fetched it. `LocalStore` holds every record, so only a store that caches a shared
    one (or a test, `tests/core/test_transactions.py`) raises it."""

    def __init__(self, key: RecordKey) -> None:
        super().__init__(f"{key[0]} {key[1]!r} is not at hand")
        self.key = key


@frozen
class Transaction:
    """What one committed event did to the store (`TrackingStore.committed`)."""

    reads: tuple[tuple[RecordKey, int], ...]
    """Each key looked up, with the version it had (0: absent), in the order first looked up."""
    writes: frozenset[RecordKey]
    """Keys whose value the event created or changed."""
    deletes: frozenset[RecordKey]


class Store(Protocol):
    """The records of the core, by key. A lookup that finds nothing returns None."""

    # Sessions, and the resume index that finds one by any token still good for a resume
    def session(self, session_id: str) -> Session | None: ...
    def session_by_token(self, token: str) -> Session | None: ...
    def devices(self, user_id: str) -> list[Session]:
        """The user's sessions, oldest first."""
        ...

    def add_session(self, session: Session) -> None: ...
    def remove_session(self, session: Session) -> User:
        """Forgets `session` and its tokens; returns its user, who may have no session left."""
        ...

    def index_token(self, token: str, session: Session) -> None: ...
    def drop_token(self, token: str) -> None: ...

    # Users: who is on which devices, and a party of which calls
    def user(self, user_id: str) -> User | None: ...
    def add_call_of_user(self, user_id: str, call_id: str) -> None: ...
    def remove_call_of_user(self, user_id: str, call_id: str) -> None: ...
    def forget_user_if_idle(self, user_id: str) -> None: ...

    # Calls
    def call(self, call_id: str) -> Call | None: ...
    def add_call(self, call: Call) -> None: ...
    def remove_call(self, call_id: str) -> None: ...
    def listed_calls(self, limit: int) -> list[Call]:
        """Up to `limit` calls, in no particular order: the admin API's listing, outside any
        event, and the one lookup that scans. (A node of a cluster lists the shared store's
        calls instead: its own are only those it has cached.)"""
        ...

    # Rooms
    def room(self, name: str) -> Room | None: ...
    def room_or_new(self, name: str) -> Room: ...
    def remove_room(self, name: str) -> None: ...

    # Presence: who watches whom, what they were last told, when the offline were last seen
    def watchers(self, user_id: str) -> Collection[str]:
        """The ids of the sessions watching `user_id` (none: empty)."""
        ...

    def add_watcher(self, user_id: str, session: Session, told: UserStatus) -> None: ...
    def remove_watcher(self, user_id: str, session: Session) -> None: ...
    def published(self, user_id: str) -> UserStatus: ...
    def set_published(self, user_id: str, status: UserStatus) -> None: ...
    def record_last_seen(self, user_id: str, unix_ms: int) -> None: ...
    def last_seen(self, user_id: str) -> int | None: ...

    def counts(self) -> dict[str, int]:
        """How many records of each kind there are (for metrics and tests)."""
        ...

    # Each session's sequence: what it was sent, held for replay (see `Session.deliver`)
    def can_replay_after(self, session: Session, last_seq: int) -> bool:
        """Whether every message after `last_seq` is still held (or there are none)."""
        ...

    def resume_replay(self, session: Session, last_seq: int) -> list[Action]:
        """The session, just attached to a new connection, is to be sent what it was sent after
        `last_seq`: the actions that do it."""
        ...

    def last_seq_sent(self, session: Session) -> int: ...
    def acknowledge(self, session: Session, last_seq: int) -> None:
        """The client has processed every message up to `last_seq`: they need not be held."""
        ...

    def detach(self, session: Session, grace_deadline: float) -> None:
        """The session lost its connection: what is sent from now on waits for a resume."""
        ...

    @property
    def reads_checked(self) -> bool:
        """Whether what the event reads is known to be current, so that a bug it hits is one
        (logged): always in a single process; a node of a cluster knows only once the event's
        commit has checked its reads, and runs it again (a stale copy of a record may make the
        core fail where the current one would not)."""
        ...

    # Transactions: one per event. Between events, and in an event until `changing`, the
    # store is read-only: lookups keep nothing for a rollback.
    def changing(self) -> None:
        """The event may change records: from now on, what it touches is kept for a rollback."""
        ...

    def commit(
        self, actions: list[Action | Delivery], applied: tuple[str, int] | None = None
    ) -> list[Action]:
        """The event's changes stand, and its deliveries are numbered, each in its session's
        sequence and kept for replay: returned is `actions` with a `Send` for each delivery to a
        connected session. `applied`: the (session id, `cseq`) of the client message the event
        applied, now the session's `last_cseq`. Raises `Overflow`, with nothing changed, if a
        delivery would overflow the replay of a session away from its connection."""
        ...

    def rollback(self) -> None:
        """Undo every change the event made."""
        ...


_ABSENT: Final[Any] = object()
"""In the journal: the key had no entry before the event."""


@define(eq=False)
class LocalStore:
    """The `Store` of a single process: dicts. Their names are public for tests that check
    the indexes against each other (tests/core/test_model.py)."""

    sessions: dict[str, Session] = field(factory=dict)
    by_resume_token: dict[str, str] = field(factory=dict)
    """Every token still good for a resume, to its session's id."""
    users: dict[str, User] = field(factory=dict)
    calls: dict[str, Call] = field(factory=dict)
    rooms: dict[str, Room] = field(factory=dict)
    watching: dict[str, dict[str, None]] = field(factory=dict)
    """Per watched user, the ids of the sessions subscribed to its presence (a dict: ordered)."""
    told: dict[str, UserStatus] = field(factory=dict)
    """Per watched user, the status its watchers were last told."""
    seen: LastSeen = field(factory=LastSeen)

    _changing: bool = field(default=False, init=False)
    """Whether the event being handled may change records: if so, each is copied once."""
    _copies: dict[Record, Record] = field(factory=dict, init=False)
    """The records the event may have changed (records compare and hash by identity), each
    to its copy from before the change."""
    _journal: list[tuple[str, str, Any]] = field(factory=list, init=False)
    """Every entry the event added, replaced or removed: (kind, key, what it was before)."""
    _mappings: dict[str, MutableMapping[str, Any]] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._mappings = {
            "session": self.sessions,
            "token": self.by_resume_token,
            "user": self.users,
            "call": self.calls,
            "room": self.rooms,
            "watchers": self.watching,
            "presence": self.told,
        }

    # Transactions ----------------------------------------------------------------------------

    @property
    def reads_checked(self) -> bool:
        return True  # every record is here, current

    def changing(self) -> None:
        self._changing = True

    def commit(
        self, actions: list[Action | Delivery], applied: tuple[str, int] | None = None
    ) -> list[Action]:
        sessions = self.sessions
        away: dict[str, list[bytes]] | None = None
        for action in actions:
            if type(action) is tuple:
                session = sessions.get(action[0])
                if session is None:  # records name only live sessions: a bug, rolled back
                    raise AssertionError(f"a message for session {action[0]}, which has ended")
                if session.conn is None:
                    away = away or {}
                    away.setdefault(action[0], []).append(action[1])
        if away is not None:
            overflowing = [
                sid for sid, frames in away.items() if sessions[sid].overflows_with(frames)
            ]
            if overflowing:
                raise Overflow(overflowing)
        if self._changing:
            self._forget_event()
        done: list[Action] = []
        for action in actions:
            if type(action) is tuple:
                session = sessions[action[0]]
                send = session.deliver(with_seq(action[1], session.next_seq))
                if send is not None:
                    done.append(send)
            else:
                done.append(action)  # type: ignore[arg-type]
        if applied is not None:
            session = sessions.get(applied[0])
            if session is not None:  # else it ended in this event (`bye`)
                session.last_cseq = applied[1]
        return done

    def _forget_event(self) -> None:
        self._changing = False
        self._copies.clear()
        self._journal.clear()

    def rollback(self) -> None:
        for live, copy in self._copies.items():
            put_back(live, copy)
        for kind, key, before in reversed(self._journal):
            if kind == "last_seen":
                self.seen.restore(key, None if before is _ABSENT else before)
            elif kind == "last_seen_forgotten":
                self.seen.restore(key, before, oldest=True)
            else:
                mapping = self._mappings[kind]
                if before is _ABSENT:
                    mapping.pop(key, None)
                else:
                    mapping[key] = before
        self._forget_event()

    def _keep(self, record: Record) -> None:
        """Copy `record` before the event changes it (once per event; lookups check that
        before calling, the cheaper for it)."""
        if self._changing and record not in self._copies:
            self._copies[record] = record.copy()

    def _note(self, kind: str, key: str) -> None:
        """Journal the entry `key` of `kind` before the event adds, replaces or removes it."""
        before = self._mappings[kind].get(key, _ABSENT)
        if isinstance(before, dict):  # a watcher set, changed in place: keep it as it was
            before = dict(before)
        self._journal.append((kind, key, before))

    # Sessions and the resume index -----------------------------------------------------------

    def session(self, session_id: str) -> Session | None:
        session = self.sessions.get(session_id)
        if self._changing and session is not None and session not in self._copies:
            self._keep(session)
        return session

    def session_by_token(self, token: str) -> Session | None:
        session_id = self.by_resume_token.get(token)
        return None if session_id is None else self.session(session_id)

    def devices(self, user_id: str) -> list[Session]:
        user = self.user(user_id)
        if user is None:
            return []
        devices = [self.sessions[sid] for sid in user.sessions]
        if self._changing:
            for session in devices:
                if session not in self._copies:
                    self._keep(session)
        return devices

    def add_session(self, session: Session) -> None:
        self._note("session", session.session_id)
        self._note("token", session.resume_token)
        self.sessions[session.session_id] = session
        self.by_resume_token[session.resume_token] = session.session_id
        self._user_to_change(session.user_id).sessions.append(session.session_id)

    def remove_session(self, session: Session) -> User:
        self._note("session", session.session_id)
        del self.sessions[session.session_id]
        self.drop_token(session.resume_token)
        if session.previous_token is not None:
            self.drop_token(session.previous_token)
        user = self.users[session.user_id]
        self._keep(user)
        user.sessions.remove(session.session_id)
        return user

    def index_token(self, token: str, session: Session) -> None:
        self._note("token", token)
        self.by_resume_token[token] = session.session_id

    def drop_token(self, token: str) -> None:
        self._note("token", token)
        del self.by_resume_token[token]

    # Users -----------------------------------------------------------------------------------

    def user(self, user_id: str) -> User | None:
        """The user's record, to read: only this store's own methods change it (and copy it
        first), so a lookup need not."""
        return self.users.get(user_id)

    def _user_to_change(self, user_id: str) -> User:
        """The user's record, made if it has none yet, copied before it changes."""
        user = self.users.get(user_id)
        if user is None:
            self._note("user", user_id)
            user = self.users[user_id] = User(user_id)
        else:
            self._keep(user)
        return user

    def add_call_of_user(self, user_id: str, call_id: str) -> None:
        """`user_id` is now a party of `call_id` (a user rung while offline is indexed too)."""
        user = self._user_to_change(user_id)
        user.calls = add_to(user.calls, call_id)

    def remove_call_of_user(self, user_id: str, call_id: str) -> None:
        user = self.users.get(user_id)
        if user is not None:
            self._keep(user)
            discard_from(user.calls, call_id)

    def forget_user_if_idle(self, user_id: str) -> None:
        user = self.users.get(user_id)
        if user is not None and not user.sessions and not user.calls:
            self._note("user", user_id)
            del self.users[user_id]

    # Calls and rooms -------------------------------------------------------------------------

    def call(self, call_id: str) -> Call | None:
        call = self.calls.get(call_id)
        if self._changing and call is not None and call not in self._copies:
            self._keep(call)
        return call

    def add_call(self, call: Call) -> None:
        self._note("call", call.call_id)
        self.calls[call.call_id] = call

    def remove_call(self, call_id: str) -> None:
        self._note("call", call_id)
        del self.calls[call_id]

    def listed_calls(self, limit: int) -> list[Call]:
        return list(itertools.islice(self.calls.values(), limit))

    def room(self, name: str) -> Room | None:
        room = self.rooms.get(name)
        if self._changing and room is not None:
            self._keep(room)
        return room

    def room_or_new(self, name: str) -> Room:
        room = self.room(name)
        if room is None:
            self._note("room", name)
            room = self.rooms[name] = Room(name=name)
        return room

    def remove_room(self, name: str) -> None:
        self._note("room", name)
        del self.rooms[name]

    # Presence --------------------------------------------------------------------------------

    def watchers(self, user_id: str) -> Collection[str]:
        return self.watching.get(user_id, ())

    def add_watcher(self, user_id: str, session: Session, told: UserStatus) -> None:
        self._note("watchers", user_id)
        self._note("presence", user_id)
        self.watching.setdefault(user_id, {})[session.session_id] = None
        self.told[user_id] = told

    def remove_watcher(self, user_id: str, session: Session) -> None:
        """`session` stops watching `user_id`; the last watcher takes the user's entries along."""
        self._note("watchers", user_id)
        watchers = self.watching[user_id]
        watchers.pop(session.session_id, None)
        if not watchers:
            self._note("presence", user_id)
            del self.watching[user_id]
            del self.told[user_id]

    def published(self, user_id: str) -> UserStatus:
        return self.told[user_id]

    def set_published(self, user_id: str, status: UserStatus) -> None:
        self._note("presence", user_id)
        self.told[user_id] = status

    def record_last_seen(self, user_id: str, unix_ms: int) -> None:
        before = self.seen.get(user_id)
        self._journal.append(("last_seen", user_id, _ABSENT if before is None else before))
        forgotten = self.seen.record(user_id, unix_ms)
        if forgotten is not None:
            self._journal.append(("last_seen_forgotten", *forgotten))

    def last_seen(self, user_id: str) -> int | None:
        return self.seen.get(user_id)

    # Each session's sequence: held in its record here --------------------------------------

    def can_replay_after(self, session: Session, last_seq: int) -> bool:
        return session.can_replay_after(last_seq)

    def resume_replay(self, session: Session, last_seq: int) -> list[Action]:
        return session.replay_after(last_seq)

    def last_seq_sent(self, session: Session) -> int:
        return session.next_seq - 1

    def acknowledge(self, session: Session, last_seq: int) -> None:
        session.acknowledge(last_seq)

    def detach(self, session: Session, grace_deadline: float) -> None:
        session.detach(grace_deadline)

    def counts(self) -> dict[str, int]:
        return {
            "sessions": len(self.sessions),
            "users": len(self.users),
            "calls": len(self.calls),
            "rooms": len(self.rooms),
            "watched_users": len(self.watching),
        }


def key_of(record: Record) -> RecordKey:
    if isinstance(record, Session):
        return ("session", record.session_id)
    if isinstance(record, Call):
        return ("call", record.call_id)
    if isinstance(record, Room):
        return ("room", record.name)
    return ("user", record.user_id)


@define(eq=False)
class TrackingStore(LocalStore):
    """A `LocalStore` that says what each event read (with versions) and wrote: what a store
    shared by many nodes checks and applies at commit. Versions count the commits that changed
    a key. It also checks the core's side of the bargain: an event begun as read-only changes
    nothing (the records it looked up are compared at commit), unless `check_read_only` is off.

    That check snapshots every record a read-only event looks up, the relays' included: more
    than half of a cluster node's CPU per relayed frame (a py-spy profile, docs/benchmarks.md).
    So the tests keep it on (every core test, the core suite as a cluster, the interleavings),
    and a node serving clients turns it off: what it would catch is a bug of the core, found
    by those tests, not a condition of the deployment."""

    check_read_only: bool = field(default=True, kw_only=True)
    versions: dict[RecordKey, int] = field(factory=dict, init=False)
    committed: Transaction | None = field(default=None, init=False)
    """What the last committed event did."""
    _reads: dict[RecordKey, int] = field(factory=dict, init=False)
    _read_values: list[tuple[Record, Any]] = field(factory=list, init=False)
    """Records an event looked up while read-only, with their values then."""

    def looked_up(self, key: RecordKey) -> None:
        """Every lookup comes here first (a subclass may raise `Missing`)."""
        self._reads.setdefault(key, self.versions.get(key, 0))

    def _looked_up_record(self, key: RecordKey, record: Any, *, copied: bool = True) -> None:
        """`copied`: an event that changes records copies this one at its lookup (all but
        users, which only this store's methods change, copying them first)."""
        self.looked_up(key)
        if record is not None and self.check_read_only and not (self._changing and copied):
            self._read_values.append((record, value_of(record)))

    def session(self, session_id: str) -> Session | None:
        session = self.sessions.get(session_id)
        self._looked_up_record(("session", session_id), session)
        return super().session(session_id)

    def session_by_token(self, token: str) -> Session | None:
        self.looked_up(("token", token))
        return super().session_by_token(token)

    def user(self, user_id: str) -> User | None:
        self._looked_up_record(("user", user_id), self.users.get(user_id), copied=False)
        return super().user(user_id)

    def devices(self, user_id: str) -> list[Session]:
        devices = super().devices(user_id)
        for session in devices:
            self._looked_up_record(("session", session.session_id), session)
        return devices

    def call(self, call_id: str) -> Call | None:
        self._looked_up_record(("call", call_id), self.calls.get(call_id))
        return super().call(call_id)

    def room(self, name: str) -> Room | None:
        self._looked_up_record(("room", name), self.rooms.get(name))
        return super().room(name)

    def watchers(self, user_id: str) -> Collection[str]:
        self.looked_up(("watchers", user_id))
        return super().watchers(user_id)

    def published(self, user_id: str) -> UserStatus:
        self.looked_up(("presence", user_id))
        return super().published(user_id)

    def last_seen(self, user_id: str) -> int | None:
        self.looked_up(("last_seen", user_id))
        return super().last_seen(user_id)

    def _keep(self, record: Record) -> None:
        """What the event changes it has read: a shared store checks its version too."""
        key = key_of(record)
        self._reads.setdefault(key, self.versions.get(key, 0))
        super()._keep(record)

    def _note(self, kind: str, key: str) -> None:
        assert self._changing, f"a read-only event changes {kind} {key!r}"
        self._reads.setdefault((kind, key), self.versions.get((kind, key), 0))
        super()._note(kind, key)

    def record_last_seen(self, user_id: str, unix_ms: int) -> None:
        assert self._changing, f"a read-only event records when {user_id} was last seen"
        self._reads.setdefault(("last_seen", user_id), self.versions.get(("last_seen", user_id), 0))
        super().record_last_seen(user_id, unix_ms)

    def rollback(self) -> None:
        super().rollback()
        self._reads, self._read_values = {}, []

    def commit(
        self, actions: list[Action | Delivery], applied: tuple[str, int] | None = None
    ) -> list[Action]:
        writes, deletes = self._changes()
        self._check_encoding(writes)
        done = super().commit(actions, applied)  # raises `Overflow` before changing anything
        for changed in writes | deletes:
            self.versions[changed] = self.versions.get(changed, 0) + 1
        self.committed = Transaction(
            reads=tuple(self._reads.items()), writes=frozenset(writes), deletes=frozenset(deletes)
        )
        self._reads, self._read_values = {}, []
        return done

    def _changes(self) -> tuple[set[RecordKey], set[RecordKey]]:
        """What the event wrote and deleted (before its deliveries are numbered). Checks that
        what it looked up while read-only has not changed."""
        for record, value in self._read_values:
            if record not in self._copies:
                assert value_of(record) == value, f"a read-only event changed {key_of(record)}"
        writes: set[RecordKey] = set()
        deletes: set[RecordKey] = set()
        for live, copy in self._copies.items():
            kind, key = key_of(live)
            held = self._mappings[kind].get(key) is live  # else deleted (or made and deleted)
            if held and value_of(live) != value_of(copy):
                writes.add((kind, key))
        existed: dict[RecordKey, bool] = {}
        for journaled, key, before in self._journal:
            kind = "last_seen" if journaled == "last_seen_forgotten" else journaled
            existed.setdefault((kind, key), before is not _ABSENT)
        for (kind, key), was in existed.items():
            mapping = self.seen if kind == "last_seen" else self._mappings[kind]
            if key in mapping:
                writes.add((kind, key))
            elif was:
                deletes.add((kind, key))
        writes -= deletes
        return writes, deletes

    def _check_encoding(self, writes: set[RecordKey]) -> None:
        """Each record written encodes (core/encoding.py) to the same value."""
        for kind, key in writes:
            if kind in RECORD_KINDS:
                record = self._mappings[kind][key]
                again = decode_record(type(record), encode_record(record))
                assert value_of(again) == value_of(record), f"{kind} {key!r} does not encode"
