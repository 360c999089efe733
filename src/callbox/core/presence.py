"""Presence: what watchers see of a user, merged over all of the user's devices.

The merge, documented in `schemas/common.json` (`userStatus`): no session at all is `offline`; any
device in a call makes the user `in_call` (a callee would get `busy`); otherwise the most available
status any device has set wins, `online` over `away` over `dnd`. A session in its reconnect grace
period still counts, so a dropped connection that comes back does not flap to `offline`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from attrs import define

from callbox.config import Config
from callbox.core.errors import Refused
from callbox.core.sessions import Session, add_to, discard_from
from callbox.messages import (
    Presence,
    PresenceSet,
    PresenceStatus,
    PresenceSubscribe,
    PresenceUnsubscribe,
    UserStatus,
)

if TYPE_CHECKING:
    from callbox.core.outbox import Outbox
    from callbox.core.store import Store


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

    def record(self, user_id: str, unix_ms: int) -> tuple[str, int] | None:
        """Remember `user_id` as seen at `unix_ms`; returns the entry this forgot, if any."""
        self._seen[user_id] = unix_ms
        self._seen.move_to_end(user_id)
        if len(self._seen) > self._capacity:
            return self._seen.popitem(last=False)
        return None

    def get(self, user_id: str) -> int | None:
        return self._seen.get(user_id)

    def restore(self, user_id: str, unix_ms: int | None, *, oldest: bool = False) -> None:
        """Undo a `record`: put back what `user_id` had (None: nothing), as the oldest entry if
        it is one `record` forgot. An entry put back otherwise counts as the newest: a rolled
        back event can only make a user's last-seen time forgotten later, never change it."""
        if unix_ms is None:
            self._seen.pop(user_id, None)
            return
        self._seen[user_id] = unix_ms
        if oldest:
            self._seen.move_to_end(user_id, last=False)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._seen


@define(eq=False)
class Watchers:
    """Who watches whose presence, and telling them when a user's merged status changes."""

    config: Config
    store: Store
    out: Outbox
    wall: float = 0.0
    """The Unix time of the event being handled, as the shell passed it: `last_seen` is the only
    thing in the core that needs it; everything else runs on monotonic time."""

    def subscribe(self, session: Session, msg: PresenceSubscribe) -> None:
        new = set(msg.users) - session.watching
        if len(session.watching) + len(new) > self.config.max_presence_subscriptions:
            limit = self.config.max_presence_subscriptions
            raise Refused("limit_reached", f"a session may watch at most {limit} users", "/users")
        for user_id in dict.fromkeys(msg.users):
            session.watching = add_to(session.watching, user_id)
            current = self.presence_of(user_id, rid=msg.rid)
            self.store.add_watcher(user_id, session, current.status)
            self.out.send(session.session_id, current)

    def unsubscribe(self, session: Session, msg: PresenceUnsubscribe) -> None:
        for user_id in msg.users:
            if user_id in session.watching:
                discard_from(session.watching, user_id)
                self.store.remove_watcher(user_id, session)

    def set_status(self, session: Session, msg: PresenceSet) -> None:
        session.presence = msg.status
        self.refresh(session.user_id)

    def stop_watching(self, session: Session) -> None:
        """The session has ended: it watches nobody any more."""
        for watched in session.watching:
            self.store.remove_watcher(watched, session)

    def last_seen_now(self, user_id: str) -> None:
        """The user's last session has ended: offline from now on."""
        self.store.record_last_seen(user_id, self._unix_ms())

    def presence_of(self, user_id: str, rid: str | None = None) -> Presence:
        status = merged_status(self.store.devices(user_id))
        last_seen = self.store.last_seen(user_id) if status == "offline" else self._unix_ms()
        return Presence(user_id=user_id, status=status, last_seen=last_seen, rid=rid)

    def refresh(self, user_id: str) -> None:
        """Tell `user_id`'s watchers if its merged status changed; O(1) when nobody watches."""
        watchers = self.store.watchers(user_id)
        if not watchers:  # most users: refreshed after every call event, so kept cheap
            return
        current = self.presence_of(user_id)
        if self.store.published(user_id) == current.status:
            return
        self.store.set_published(user_id, current.status)
        for watcher in list(watchers):
            self.out.send(watcher, current)

    def _unix_ms(self) -> int:
        return int(self.wall * 1000)
