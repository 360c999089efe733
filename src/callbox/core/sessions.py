"""Sessions and connections as the core sees them: sequencing, replay and rate limits.

A session outlives its connection: while it is in its reconnect grace period it has no connection,
still counts as connected, and keeps what is sent to it so a resuming client can be given every
message after the last `seq` it processed.
"""

from __future__ import annotations

from collections import deque

from attrs import define

from callbox.codec import positional_constructor
from callbox.core.actions import ConnId, Send
from callbox.messages import PresenceStatus

RECENTLY_ENDED_CALLS = 16
"""Ended calls a session remembers, so a late message about one gets `invalid_state`."""

NOTHING: frozenset[str] = frozenset()
"""A session's `ringing`, `rooms` and `watching`, and a user's `calls`, until their first item:
most sessions never ring, join a room or watch anyone, and an empty set takes 216 bytes."""


def add_to(items: set[str] | frozenset[str], item: str) -> set[str]:
    """`items` with `item` added: in place, once `items` is a set of its own (not `NOTHING`)."""
    if isinstance(items, frozenset):
        return {*items, item}
    items.add(item)
    return items


def discard_from(items: set[str] | frozenset[str], item: str) -> None:
    if isinstance(items, set):
        items.discard(item)


_NEW_SEND = positional_constructor(Send)  # Send(conn, frame), once per message sent


@define
class TokenBucket:
    """Allows `rate` messages a second on average, in bursts of up to `burst`."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate=rate, burst=burst, tokens=burst, updated=now)

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@define(eq=False)
class Session:
    session_id: str
    user_id: str
    device_id: str | None
    resume_token: str
    replay_messages: int
    """At most this many frames are kept for replay..."""
    replay_bytes: int
    """...and at most this many bytes of them (one frame larger than that is kept alone)."""
    conn: ConnId | None = None
    next_seq: int = 1
    replay: deque[bytes] | None = None
    """The last frames sent, oldest first, from the first one on (a deque takes ~600 bytes:
    idle sessions are most sessions). Their `seq`s are consecutive and end at `next_seq - 1`."""
    replay_held: int = 0
    """Bytes in `replay`."""
    call_id: str | None = None
    """The call this device has joined; a device is in at most one call."""
    ringing: set[str] | frozenset[str] = NOTHING
    """Calls ringing on this device."""
    recently_ended: deque[str] | tuple[()] = ()
    """The last `RECENTLY_ENDED_CALLS` calls this device was in, from its first one on."""
    grace_deadline: float | None = None
    presence: PresenceStatus = "online"
    rooms: set[str] | frozenset[str] = NOTHING
    watching: set[str] | frozenset[str] = NOTHING
    """Users whose presence this session has subscribed to."""
    broadcast_bucket: TokenBucket | None = None
    """Made at the first `room_broadcast`: most sessions never send one."""

    def deliver(self, frame: bytes) -> Send | None:
        """Keep `frame`, the message numbered `next_seq`, for replay, and say where to send it
        now (if connected). The oldest frames make room when a replay limit is passed.

        Raises `ReplayOverflow` when the session is in its grace period and a limit is passed:
        the session must end rather than lose a message its client would never know about.
        """
        self.next_seq += 1
        replay = self.replay
        if replay is None:
            replay = self.replay = deque()
        replay.append(frame)
        held = self.replay_held + len(frame)
        while held > self.replay_bytes or len(replay) > self.replay_messages:
            if self.conn is None:
                raise ReplayOverflow(self.session_id)
            if len(replay) == 1:  # one frame over the budget on its own: kept alone
                break
            held -= len(replay.popleft())
        self.replay_held = held
        return None if self.conn is None else _NEW_SEND(self.conn, frame)

    def can_replay_after(self, last_seq: int) -> bool:
        """Whether every message after `last_seq` is still held (or there are none)."""
        first_held = self.next_seq - len(self.replay or ())
        return first_held - 1 <= last_seq <= self.next_seq - 1

    def replay_after(self, last_seq: int) -> list[Send]:
        assert self.conn is not None
        replay = self.replay or ()
        first_held = self.next_seq - len(replay)
        return [
            Send(self.conn, frame) for seq, frame in enumerate(replay, first_held) if seq > last_seq
        ]

    def forget_call(self, call_id: str) -> None:
        """The call is over for this device; remember it as recently ended."""
        if self.call_id == call_id:
            self.call_id = None
        discard_from(self.ringing, call_id)
        if not isinstance(self.recently_ended, deque):
            self.recently_ended = deque(maxlen=RECENTLY_ENDED_CALLS)
        self.recently_ended.append(call_id)


class ReplayOverflow(Exception):
    """A disconnected session's replay buffer is full; the session has to end."""


@define(eq=False)
class Link:
    """A connection, before and after it has a session."""

    conn: ConnId
    bucket: TokenBucket
    session: Session | None = None
