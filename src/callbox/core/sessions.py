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
from callbox.messages import Hello, PresenceStatus

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
    unsent_from: int = 0
    """While the session is away, the `seq` of the first frame that was never written to a
    socket: the client cannot have it, so it must stay held until the client resumes."""
    previous_token: str | None = None
    """The resume token the last resume replaced, still good for one resume until
    `previous_token_expires`, in case the `welcome` that carried its successor was lost."""
    previous_token_expires: float = 0.0
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

        Raises `ReplayOverflow` when the session is away and making room would drop a frame its
        client never had: the session must end rather than lose a message silently. Frames sent
        before the connection was lost may go: the client may well have read them.
        """
        self.next_seq += 1
        replay = self.replay
        if replay is None:
            replay = self.replay = deque()
        replay.append(frame)
        held = self.replay_held + len(frame)
        while held > self.replay_bytes or len(replay) > self.replay_messages:
            if len(replay) == 1:  # one frame over the budget on its own: kept alone
                break
            if self.conn is None and self.next_seq - len(replay) >= self.unsent_from:
                self.replay_held = held
                raise ReplayOverflow(self.session_id)
            held -= len(replay.popleft())
        self.replay_held = held
        return None if self.conn is None else _NEW_SEND(self.conn, frame)

    def detach(self, grace_deadline: float) -> None:
        """The connection is lost: what is sent from now on waits for a resume."""
        self.conn = None
        self.grace_deadline = grace_deadline
        self.unsent_from = self.next_seq

    def takes_token(self, token: str, now: float) -> bool:
        """Whether `token` may resume this session now: the current token, or the one it
        replaced while that is still good (see `previous_token`)."""
        return token == self.resume_token or (
            token == self.previous_token and now < self.previous_token_expires
        )

    def rotate_token(self, used: str, new: str, previous_expires: float) -> list[str]:
        """A resume with `used` succeeded: `new` becomes the token, and the tokens that are no
        longer good are returned. Resuming with the current token keeps it good once more until
        `previous_expires` (the client may never read the `welcome` that carries `new`);
        resuming with the previous one spends it, and its lost successor with it."""
        retired = [self.resume_token]
        if self.previous_token is not None:
            retired.append(self.previous_token)
        if used == self.resume_token:
            self.previous_token, self.previous_token_expires = used, previous_expires
            retired.remove(used)
        else:
            self.previous_token = None
        self.resume_token = new
        return retired

    def acknowledge(self, last_seq: int) -> None:
        """The client has processed every message up to `last_seq`: they need not be held."""
        replay = self.replay
        if replay is None:
            return
        first_held = self.next_seq - len(replay)
        for _ in range(min(last_seq - first_held + 1, len(replay))):
            self.replay_held -= len(replay.popleft())

    def can_replay_after(self, last_seq: int) -> bool:
        """Whether every message after `last_seq` is still held (or there are none)."""
        first_held = self.next_seq - len(self.replay or ())
        return first_held - 1 <= last_seq <= self.next_seq - 1

    def replay_after(self, last_seq: int) -> list[Send]:
        """The frames after `last_seq`, to send on the session's new connection. Those up to it
        stay held: only an `ack` drops them, so a client whose resume `welcome` was lost may
        resume again from the same `last_seq` or an earlier one."""
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
    address: str
    """What failed sign-ins on this connection count against (`throttle.address_key`)."""
    session: Session | None = None
    delayed_hello: Hello | None = None
    """A `hello` waiting out its address's sign-in throttle."""
