"""The store: every record the core keeps (sessions, users, calls, rooms, watchers, last-seen
times, the resume index), reached only through the `Store` port.

`LocalStore`, plain dicts in this process, is the default and the only one yet: the port is where
a store shared by many nodes goes (docs/decisions/0008-core-layout.md). What is not a record
stays out of it: the connections of this process (`Link`s) belong to the node that holds them.

Records name each other by key, never hold each other: a user lists its sessions' ids, a room
its members' session ids, a call its parties' session ids. So whatever the core reads, it read
through a lookup here, which is what a store shared by many nodes must be able to see.

Each operation costs the size of what it touches: calls by `call_id`, sessions by id and by resume
token, and per user the sessions and calls it is in. Nothing scans all calls or all users.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from attrs import define, field

from callbox.core.calls import Call
from callbox.core.presence import LastSeen
from callbox.core.rooms import Room
from callbox.core.sessions import NOTHING, Session, add_to, discard_from
from callbox.messages import UserStatus


@define
class User:
    """Everything indexed per user: its sessions (devices) and the calls it is a party of."""

    sessions: list[str] = field(factory=list)
    """The ids of its sessions, oldest first (a few: `max_sessions_per_user`)."""
    calls: set[str] | frozenset[str] = NOTHING


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

    def session(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def session_by_token(self, token: str) -> Session | None:
        session_id = self.by_resume_token.get(token)
        return None if session_id is None else self.sessions.get(session_id)

    def devices(self, user_id: str) -> list[Session]:
        user = self.users.get(user_id)
        return [] if user is None else [self.sessions[sid] for sid in user.sessions]

    def add_session(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self.by_resume_token[session.resume_token] = session.session_id
        self.users.setdefault(session.user_id, User()).sessions.append(session.session_id)

    def remove_session(self, session: Session) -> User:
        del self.sessions[session.session_id]
        del self.by_resume_token[session.resume_token]
        if session.previous_token is not None:
            del self.by_resume_token[session.previous_token]
        user = self.users[session.user_id]
        user.sessions.remove(session.session_id)
        return user

    def index_token(self, token: str, session: Session) -> None:
        self.by_resume_token[token] = session.session_id

    def drop_token(self, token: str) -> None:
        del self.by_resume_token[token]

    def user(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    def add_call_of_user(self, user_id: str, call_id: str) -> None:
        """`user_id` is now a party of `call_id` (a user rung while offline is indexed too)."""
        user = self.users.setdefault(user_id, User())
        user.calls = add_to(user.calls, call_id)

    def remove_call_of_user(self, user_id: str, call_id: str) -> None:
        user = self.users.get(user_id)
        if user is not None:
            discard_from(user.calls, call_id)

    def forget_user_if_idle(self, user_id: str) -> None:
        user = self.users.get(user_id)
        if user is not None and not user.sessions and not user.calls:
            del self.users[user_id]

    def call(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    def add_call(self, call: Call) -> None:
        self.calls[call.call_id] = call

    def remove_call(self, call_id: str) -> None:
        del self.calls[call_id]

    def room(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def room_or_new(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name=name)
        return room

    def remove_room(self, name: str) -> None:
        del self.rooms[name]

    def watchers(self, user_id: str) -> Collection[str]:
        return self.watching.get(user_id, ())

    def add_watcher(self, user_id: str, session: Session, told: UserStatus) -> None:
        self.watching.setdefault(user_id, {})[session.session_id] = None
        self.told[user_id] = told

    def remove_watcher(self, user_id: str, session: Session) -> None:
        """`session` stops watching `user_id`; the last watcher takes the user's entries along."""
        watchers = self.watching[user_id]
        watchers.pop(session.session_id, None)
        if not watchers:
            del self.watching[user_id]
            del self.told[user_id]

    def published(self, user_id: str) -> UserStatus:
        return self.told[user_id]

    def set_published(self, user_id: str, status: UserStatus) -> None:
        self.told[user_id] = status

    def record_last_seen(self, user_id: str, unix_ms: int) -> None:
        self.seen.record(user_id, unix_ms)

    def last_seen(self, user_id: str) -> int | None:
        return self.seen.get(user_id)

    def counts(self) -> dict[str, int]:
        return {
            "sessions": len(self.sessions),
            "users": len(self.users),
            "calls": len(self.calls),
            "rooms": len(self.rooms),
            "watched_users": len(self.watching),
        }
