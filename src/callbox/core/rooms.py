"""Rooms: named groups of sessions that can broadcast to each other and hold one call.

Members are users, membership is held by sessions: a user with two devices in a room is one member,
and leaves the room when its last device does.
"""

from __future__ import annotations

from collections import Counter

from attrs import define, field

from callbox.core.sessions import Session


@define(eq=False)
class Room:
    name: str
    sessions: dict[str, Session] = field(factory=dict)
    devices_per_user: Counter[str] = field(factory=Counter)
    call_id: str | None = None
    """The room's running call, started with `call_initiate {room}`."""

    def members(self) -> list[str]:
        return list(self.devices_per_user)

    def add(self, session: Session) -> bool:
        """Adds a device; True when that makes its user a new member."""
        self.sessions[session.session_id] = session
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

    def other_users_sessions(self, user_id: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.user_id != user_id]
