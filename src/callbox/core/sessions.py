"""Sessions and connections as the core sees them: signing in, sequencing, replay, resuming,
acknowledging, rate limits, and the session's own timers.

A session outlives its connection: while it is in its reconnect grace period it has no connection,
still counts as connected, and keeps what is sent to it so a resuming client can be given every
message after the last `seq` it processed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING

from attrs import define, field

from callbox.auth import AuthError
from callbox.codec import positional_constructor, with_seq
from callbox.config import Config
from callbox.core.actions import (
    CLOSE_AUTH_FAILED,
    CLOSE_HELLO_TIMEOUT,
    CLOSE_POLICY,
    CLOSE_TAKEN_OVER,
    Action,
    ConnId,
    GraceTimer,
    HelloDelayTimer,
    HelloTimer,
    IceRefreshTimer,
    Send,
)
from callbox.core.errors import Refused
from callbox.core.records import shallow_copier
from callbox.core.throttle import AuthThrottle
from callbox.messages import (
    Ack,
    ErrorCode,
    Hello,
    IceServer,
    IceServersUpdate,
    PresenceStatus,
    Welcome,
)

if TYPE_CHECKING:
    from callbox.core.outbox import Outbox
    from callbox.core.store import Store, User

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

    def copy(self) -> TokenBucket:
        return _copy_bucket(self)

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
    last_cseq: int = 0
    """The highest `cseq` of the client's messages applied (0: none). Like `next_seq`, it moves
    when an event commits (`Store.commit`), not during it."""
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

    def copy(self) -> Session:
        """A copy that shares no container an event changes in place (see core/records.py).
        The replay is shared: an event never changes it in place (its deliveries are numbered
        after its copies are dropped, and an `ack` makes a new one)."""
        copy = _copy_session(self)
        if type(self.recently_ended) is deque:
            copy.recently_ended = self.recently_ended.copy()
        if type(self.ringing) is set:  # else `NOTHING`, never changed in place
            copy.ringing = set(self.ringing)
        if type(self.rooms) is set:
            copy.rooms = set(self.rooms)
        if type(self.watching) is set:
            copy.watching = set(self.watching)
        if self.broadcast_bucket is not None:
            copy.broadcast_bucket = self.broadcast_bucket.copy()
        return copy

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

    def overflows_with(self, frames: list[bytes]) -> bool:
        """Whether delivering `frames` (unnumbered) would end the session (`ReplayOverflow`):
        tried on a copy, so the rule stays `deliver`'s alone."""
        probe = self.copy()
        probe.replay = None if self.replay is None else self.replay.copy()
        try:
            for frame in frames:
                probe.deliver(with_seq(frame, probe.next_seq))
        except ReplayOverflow:
            return True
        return False

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
        dropped = min(last_seq - (self.next_seq - len(replay)) + 1, len(replay))
        if dropped > 0:  # a new deque: a rollback puts the old one back (see `copy`)
            self.replay_held -= sum(len(frame) for frame in islice(replay, dropped))
            self.replay = deque(islice(replay, dropped, None))

    def can_replay_after(self, last_seq: int) -> bool:
        """Whether every message after `last_seq` is still held (or there are none)."""
        first_held = self.next_seq - len(self.replay or ())
        return first_held - 1 <= last_seq <= self.next_seq - 1

    def replay_after(self, last_seq: int) -> list[Action]:
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


_copy_bucket = shallow_copier(TokenBucket)
_copy_session = shallow_copier(Session)


class ReplayOverflow(Exception):
    """A disconnected session's replay buffer is full; the session has to end."""


@define(eq=False)
class Link:
    """A connection, before and after it has a session."""

    conn: ConnId
    bucket: TokenBucket
    address: str
    """What failed sign-ins on this connection count against (`throttle.address_key`)."""
    session_id: str | None = None
    """The session this connection carries, once its `hello` has been answered."""
    delayed_hello: Hello | None = None
    """A `hello` waiting out its address's sign-in throttle."""


def held_session(store: Store, session_id: str) -> Session:
    """A session another record names: it must exist (records name only live sessions)."""
    session = store.session(session_id)
    assert session is not None, f"session {session_id} is named by a record but not held"
    return session


@define(eq=False)
class Sessions:
    """Signing in (throttled per address), resuming, acknowledging, losing a connection, and
    the timers of a session or of a connection still without one.

    What changes this process's connections (`links`, a `Link`'s session or held `hello`, the
    sign-in throttle) waits for the event's commit (`Outbox.after_commit`): an event rolled
    back and run again must find them as they were."""

    config: Config
    store: Store
    out: Outbox
    links: dict[ConnId, Link]
    """The connections of this process, shared with the switchboard."""
    authenticate: Callable[[Hello], str]
    """Returns the user id for a `hello`, or raises `AuthError`."""
    ice_servers: Callable[[str], list[IceServer]]
    ice_refresh_in: Callable[[], float | None]
    new_token: Callable[[int], str]
    end_session: Callable[[Session], None]
    """The switchboard's end of a session, everything it was in included: a resume that cannot
    be honoured ends the session it names."""
    auth_throttle: AuthThrottle = field(factory=AuthThrottle)
    node: str | None = None
    """In a cluster, the name of the node `welcome` comes from."""

    def hello(self, link: Link, hello: Hello, now: float) -> Session | None:
        """Answer `hello` now, or once its address's sign-in throttle allows; returns the new
        session it started, if it did."""
        if link.delayed_hello is not None:
            reason = "a hello is already waiting for its answer"
            self.out.error(link.conn, "invalid_state", reason, "/type", hello.rid)
            return None
        delay = self.auth_throttle.delay(link.address, now)
        if delay > 0:
            self.out.after_commit.append(partial(setattr, link, "delayed_hello", hello))
            self.out.start_timer(HelloDelayTimer(link.conn), now + delay)
            return None
        return self._sign_in(link, hello, now)

    def _sign_in(self, link: Link, hello: Hello, now: float) -> Session | None:
        """Resume the session `hello` names, or start a new one (returned), or turn it away."""
        try:
            user_id = self.authenticate(hello)
        except AuthError as exc:
            self.out.after_commit.append(partial(self.auth_throttle.failed, link.address, now))
            closing = (CLOSE_AUTH_FAILED, "authentication failed")
            self._turn_away(link, "auth_failed", str(exc), hello.rid, closing)
            return None
        if hello.resume is not None and hello.last_seq is not None:
            old = self.store.session_by_token(hello.resume)
            if old is not None and old.user_id == user_id and old.takes_token(hello.resume, now):
                if self.store.can_replay_after(old, hello.last_seq):
                    self._resume(link, old, hello, now)
                    return None
                self._take_connection(old)
                self.end_session(old)
        user = self.store.user(user_id)
        if user is not None and len(user.sessions) >= self.config.max_sessions_per_user:
            limit = self.config.max_sessions_per_user
            message = f"user {user_id} already has {limit} sessions, the most allowed"
            closing = (CLOSE_POLICY, "too many sessions")
            self._turn_away(link, "session_limit", message, hello.rid, closing)
            return None
        session = Session(
            session_id=self.new_token(12),
            user_id=user_id,
            device_id=hello.device_id,
            resume_token=self.new_token(24),
            replay_messages=self.config.replay_buffer_messages,
            replay_bytes=self.config.replay_buffer_bytes,
        )
        self.store.add_session(session)
        self._attach(link, session)
        self._welcome(session, resumed=False, rid=hello.rid, now=now)
        return session

    def _turn_away(
        self, link: Link, code: ErrorCode, message: str, rid: str | None, closing: tuple[int, str]
    ) -> None:
        """Refuse a `hello`: say why (an `error`), close the connection with `closing`'s code and
        reason, and forget it."""
        self.out.error(link.conn, code, message, None, rid)
        self.out.close(link.conn, *closing)
        self.out.cancel_timer(HelloTimer(link.conn))
        self.out.after_commit.append(partial(self.links.pop, link.conn, None))

    def _attach(self, link: Link, session: Session) -> None:
        """`link`'s connection carries `session` from now on: its `hello` has been answered."""
        session.conn = link.conn
        self.out.after_commit.append(partial(setattr, link, "session_id", session.session_id))
        self.out.cancel_timer(HelloTimer(link.conn))

    def _welcome(self, session: Session, *, resumed: bool, rid: str | None, now: float) -> None:
        assert session.conn is not None
        welcome = Welcome(
            user_id=session.user_id,
            session_id=session.session_id,
            resume_token=session.resume_token,
            resumed=resumed,
            last_cseq=session.last_cseq if resumed else None,
            node=self.node,
            ice_servers=self.ice_servers(session.user_id),
            heartbeat_ms=self.config.heartbeat_ms,
            limits=self.config.limits(),
            rid=rid,
        )
        self.out.send_unnumbered(session.conn, welcome)
        self._arm_ice_refresh(session, now)

    def _arm_ice_refresh(self, session: Session, now: float) -> None:
        refresh_in = self.ice_refresh_in()
        if refresh_in is not None:
            self.out.start_timer(IceRefreshTimer(session.session_id), now + refresh_in)

    def _take_connection(self, session: Session) -> None:
        """A `hello` with `session`'s token takes the session from its connection, if it still
        has one (half-open, or another tab), whether the resume is honoured or not: closed with
        4002 and forgotten, so that neither its loss (a grace timer) nor what still arrives on it
        acts for the session any more."""
        if session.conn is not None:
            self.out.after_commit.append(partial(self.links.pop, session.conn, None))
            self.out.close(session.conn, CLOSE_TAKEN_OVER, "session taken over")

    def _resume(self, link: Link, session: Session, hello: Hello, now: float) -> None:
        assert hello.last_seq is not None and hello.resume is not None
        self._take_connection(session)
        if session.conn is None:
            self.out.cancel_timer(GraceTimer(session.session_id))
            session.grace_deadline = None
        for token in session.rotate_token(
            hello.resume, self.new_token(24), now + self.config.reconnect_grace_ms / 1000
        ):
            self.store.drop_token(token)
        self.store.index_token(session.resume_token, session)
        if session.previous_token is not None:
            self.store.index_token(session.previous_token, session)
        self._attach(link, session)
        self._welcome(session, resumed=True, rid=hello.rid, now=now)
        self.out.actions.extend(self.store.resume_replay(session, hello.last_seq))

    def acknowledge(self, session: Session, ack: Ack) -> None:
        sent = self.store.last_seq_sent(session)
        if ack.last_seq > sent:
            reason = f"last_seq {ack.last_seq} is ahead of the last seq sent ({sent})"
            raise Refused("invalid_state", reason, "/last_seq")
        self.store.acknowledge(session, ack.last_seq)

    def detach(self, session: Session, now: float) -> None:
        """The session's connection is lost: its grace period starts."""
        deadline = now + self.config.reconnect_grace_ms / 1000
        self.store.detach(session, deadline)
        self.out.cancel_timer(IceRefreshTimer(session.session_id))
        self.out.start_timer(GraceTimer(session.session_id), deadline)

    def forget(self, session: Session) -> User:
        """The session's own part of its end: its records and timers go. Returns its user."""
        user = self.store.remove_session(session)
        if session.conn is None:
            self.out.cancel_timer(GraceTimer(session.session_id))
        self.out.cancel_timer(IceRefreshTimer(session.session_id))
        return user

    # -----------------------------------------------------------------------------------------
    # Timers

    def hello_timed_out(self, conn: ConnId) -> None:
        """A connection that has not sent `hello` in time is closed (unless one is waiting out
        the throttle: that one is answered when it may be)."""
        link = self.links.get(conn)
        if link is not None and link.session_id is None and link.delayed_hello is None:
            self.out.after_commit.append(partial(self.links.pop, conn, None))
            self.out.close(conn, CLOSE_HELLO_TIMEOUT, "hello timeout")

    def throttle_passed(self, conn: ConnId, now: float) -> Session | None:
        """The `hello` held back by the sign-in throttle is answered now."""
        link = self.links.get(conn)
        if link is None or link.delayed_hello is None:
            return None
        hello = link.delayed_hello
        self.out.after_commit.append(partial(setattr, link, "delayed_hello", None))
        return self._sign_in(link, hello, now)

    def grace_over(self, session_id: str, now: float) -> Session | None:
        """The session whose reconnect grace has run out, if it has and nothing resumed it."""
        session = self.store.session(session_id)
        deadline = None if session is None else session.grace_deadline
        return session if deadline is not None and now >= deadline else None

    def refresh_ice(self, session_id: str, now: float) -> None:
        """Push fresh TURN credentials to a connected session, and arm the next refresh."""
        session = self.store.session(session_id)
        if session is not None and session.conn is not None:
            update = IceServersUpdate(ice_servers=self.ice_servers(session.user_id))
            self.out.send(session.session_id, update)
            self._arm_ice_refresh(session, now)
