"""Rooms: named groups of sessions that can broadcast to each other and hold one call.

Members are users, membership is held by sessions: a user with two devices in a room is one member,
and leaves the room when its last device does.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import orjson
from attrs import define, field

from callbox.config import Config
from callbox.core.errors import Refused
from callbox.core.sessions import Session, TokenBucket, add_to, discard_from
from callbox.messages import (
    RoomBroadcast,
    RoomJoin,
    RoomJoined,
    RoomLeave,
    RoomLeft,
    RoomMemberJoined,
    RoomMemberLeft,
    RoomMessage,
)

if TYPE_CHECKING:
    from callbox.core.outbox import Outbox
    from callbox.core.store import Store


@define(eq=False)
class Room:
    name: str
    sessions: dict[str, str] = field(factory=dict)
    """The ids of the member devices' sessions, to their users' ids, in the order they joined."""
    devices_per_user: Counter[str] = field(factory=Counter)
    call_id: str | None = None
    """The room's running call, started with `call_initiate {room}`."""

    def copy(self) -> Room:
        """A copy that shares no container the core changes in place (see core/records.py)."""
        return Room(self.name, dict(self.sessions), self.devices_per_user.copy(), self.call_id)

    def members(self) -> list[str]:
        return list(self.devices_per_user)

    def add(self, session: Session) -> bool:
        """Adds a device; True when that makes its user a new member."""
        self.sessions[session.session_id] = session.user_id
        self.devices_per_user[session.user_id] += 1
        return self.devices_per_user[session.user_id] == 1

    def remove(self, session: Session) -> bool:
        """Removes a device; True when that was its user's last one here."""
        del self.sessions[session.session_id]
        self.devices_per_user[session.user_id] -= 1
        if self.devices_per_user[session.user_id] == 0:
            del self.devices_per_user[session.user_id]
            return True
        return False

    def other_users_devices(self, user_id: str) -> list[str]:
        """The session ids of the members other than `user_id`."""
        return [sid for sid, uid in self.sessions.items() if uid != user_id]


def room_of_member(store: Store, session: Session, name: str) -> Room:
    """The room `session` is in, or a `Refused` saying it is not."""
    room = store.room(name)
    if room is None or name not in session.rooms:
        raise Refused("not_in_room", f"you are not in room {name}: room_join it first", "/room")
    return room


@define(eq=False)
class Rooms:
    """Joining and leaving rooms, and broadcasting to their members."""

    config: Config
    store: Store
    out: Outbox

    def join(self, session: Session, msg: RoomJoin) -> None:
        room = self.store.room(msg.room)
        if msg.room not in session.rooms:
            if len(session.rooms) >= self.config.max_rooms_per_session:
                limit = self.config.max_rooms_per_session
                raise Refused(
                    "limit_reached", f"a session may be in at most {limit} rooms", "/room"
                )
            full = room is not None and len(room.devices_per_user) >= self.config.max_room_members
            if full and room is not None and session.user_id not in room.devices_per_user:
                limit = self.config.max_room_members
                raise Refused("room_full", f"room {msg.room} has {limit} members already", "/room")
            room = self.store.room_or_new(msg.room)
            session.rooms = add_to(session.rooms, msg.room)
            if room.add(session):
                joined = RoomMemberJoined(room=room.name, user_id=session.user_id)
                for other in room.other_users_devices(session.user_id):
                    self.out.send(other, joined)
        assert room is not None
        members = room.members()
        self.out.send(
            session.session_id,
            RoomJoined(room=room.name, members=members, call_id=room.call_id, rid=msg.rid),
        )

    def leave(self, session: Session, msg: RoomLeave) -> None:
        self.leave_room(room_of_member(self.store, session, msg.room), session)
        self.out.send(session.session_id, RoomLeft(room=msg.room, rid=msg.rid))

    def leave_all(self, session: Session) -> None:
        """The session has ended: it leaves every room it was in."""
        for name in list(session.rooms):
            room = self.store.room(name)
            assert room is not None, f"session {session.session_id} is in a room that is gone"
            self.leave_room(room, session)

    def leave_room(self, room: Room, session: Session) -> None:
        discard_from(session.rooms, room.name)
        if room.remove(session):
            left = RoomMemberLeft(room=room.name, user_id=session.user_id)
            for other in room.sessions:
                self.out.send(other, left)
        if not room.sessions:
            self.store.remove_room(room.name)

    def broadcast(self, session: Session, msg: RoomBroadcast, now: float) -> None:
        room = room_of_member(self.store, session, msg.room)
        size = len(orjson.dumps(msg.data))
        if size > self.config.max_broadcast_bytes:
            limit = self.config.max_broadcast_bytes
            reason = f"data is {size} bytes encoded, at most {limit} are allowed"
            raise Refused("message_too_large", reason, "/data")
        rate = self.config.broadcasts_per_second
        if session.broadcast_bucket is None:  # full, as it would be had it been made at hello
            session.broadcast_bucket = TokenBucket.full(rate, 2 * rate, now)
        if not session.broadcast_bucket.take(now):
            raise Refused("rate_limited", f"at most {rate} broadcasts a second")
        message = RoomMessage(room=room.name, from_=session.user_id, data=msg.data)
        for member in room.sessions:
            if member != session.session_id:
                self.out.send(member, message)
