"""Presence: what watchers see of a user, merged over all of the user's devices.

The merge, documented in `schemas/common.json` (`userStatus`): no session at all is `offline`; any
device in a call makes the user `in_call` (a callee would get `busy`); otherwise the most available
status any device has set wins, `online` over `away` over `dnd`. A session in its reconnect grace
period still counts, so a dropped connection that comes back does not flap to `offline`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from callbox.core.sessions import Session
from callbox.messages import PresenceStatus, UserStatus

MOST_AVAILABLE_FIRST: tuple[PresenceStatus, ...] = ("online", "away", "dnd")
LAST_SEEN_REMEMBERED = 65_536
"""Users whose last-seen time is kept once offline; the longest gone are forgotten first."""


def merged_status(sessions: Iterable[Session]) -> UserStatus:
    devices = list(sessions)
    if not devices:
        return "offline"
    if any(device.call_id is not None for device in devices):
        return "in_call"
    return min((device.presence for device in devices), key=MOST_AVAILABLE_FIRST.index)


class LastSeen:
    """When users were last seen, in Unix ms; bounded, forgetting the longest-gone first."""

    def __init__(self, capacity: int = LAST_SEEN_REMEMBERED) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[str, int] = OrderedDict()

    def record(self, user_id: str, unix_ms: int) -> None:
        self._seen[user_id] = unix_ms
        self._seen.move_to_end(user_id)
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)

    def get(self, user_id: str) -> int | None:
        return self._seen.get(user_id)
