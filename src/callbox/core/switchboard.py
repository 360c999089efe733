"""The switchboard: sessions, calls and routing, with no I/O.

The shell feeds it what happened (a connection opened, bytes arrived, a connection was lost, a timer
fired), always with the current time, and carries out the actions it returns. Tests drive it the
same way, with no sockets and no clock: the core reads none. Monotonic time (`now`) comes with every
event; Unix time (`wall`) with the events that can tell a watcher `last_seen`.

A refusal is a `SignalingError` (callbox.core.errors), answered with an `error`. Any other exception
while a client message is handled is a bug: it is logged, the sender is answered `internal`, and
the connection and everyone else carry on.

State is indexed so that every operation costs the size of what it touches: calls by `call_id`,
sessions by id and by resume token, and per user the sessions and calls it is in. Nothing scans all
calls or all users.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Literal

import orjson
from attrs import define, field, frozen

from callbox.auth import AuthError
from callbox.codec import (
    ProtocolError,
    decode_client,
    encode,
    positional_constructor,
    rid_of,
    with_seq,
)
from callbox.config import Config
from callbox.core.actions import (
    Action,
    CancelTimer,
    Close,
    CloseCall,
    ConnId,
    DurationCapTimer,
    ExpiryWarningTimer,
    GraceTimer,
    HelloDelayTimer,
    HelloTimer,
    IceRefreshTimer,
    OpenCall,
    RingTimer,
    Send,
    StartTimer,
    TimerKey,
)
from callbox.core.calls import Call, Party
from callbox.core.errors import IllegalTransition, Refused
from callbox.core.presence import LastSeen, merged_status
from callbox.core.rooms import Room
from callbox.core.sessions import (
    NOTHING,
    Link,
    ReplayOverflow,
    Session,
    TokenBucket,
    add_to,
    discard_from,
)
from callbox.core.states import CALL_RELAYS, PARTY_RELAYS, CallEvent, CallState, PartyState
from callbox.core.throttle import AuthThrottle, address_key
from callbox.messages import (
    Ack,
    Bye,
    CallAccepted,
    CallAnswer,
    CallEnded,
    CallExpiring,
    CallIncoming,
    CallInitiate,
    CallInvite,
    CallJoin,
    CallReject,
    CallRejected,
    CallRinging,
    ClientMessage,
    DropoutReason,
    EndReason,
    Error,
    ErrorCode,
    Hangup,
    HangupReason,
    Hello,
    IceCandidate,
    IceServer,
    IceServersUpdate,
    ParticipantJoined,
    ParticipantLeft,
    Ping,
    Pong,
    Presence,
    PresenceSet,
    PresenceSubscribe,
    PresenceUnsubscribe,
    RelayedIceCandidate,
    RelayedSdpAnswer,
    RelayedSdpOffer,
    RoomBroadcast,
    RoomJoin,
    RoomJoined,
    RoomLeave,
    RoomLeft,
    RoomMemberJoined,
    RoomMemberLeft,
    RoomMessage,
    SdpAnswer,
    SdpOffer,
    ServerMessage,
    UserStatus,
    Welcome,
)

log = logging.getLogger("callbox.core")

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_AUTH_FAILED = 4001
CLOSE_TAKEN_OVER = 4002
CLOSE_HELLO_TIMEOUT = 4003

END_REASON_FOR_DROPOUT: dict[DropoutReason, EndReason] = {
    "declined": "rejected",
    "busy": "busy",
    "offline": "offline",
    "ring_timeout": "ring_timeout",
    "call_full": "call_full",
}
LeaveReason = Literal["hangup", "disconnected"]
INTERNAL_ERROR_MESSAGE = "the server failed to handle this message; it has been logged"

_NEW_RELAYED_ICE_CANDIDATE = positional_constructor(RelayedIceCandidate)
_NEW_RELAYED_SDP_OFFER = positional_constructor(RelayedSdpOffer)
_NEW_RELAYED_SDP_ANSWER = positional_constructor(RelayedSdpAnswer)


def _device_busy(session: Session) -> Refused:
    """A device is in one call at a time: refused before anything changes."""
    return Refused("user_busy", f"this device is in call {session.call_id}: hang up first")


@frozen
class Reply:
    """The request being answered: its `rid` is echoed on what is sent to the requesting session."""

    session: Session
    rid: str | None

    def rid_for(self, session: Session) -> str | None:
        return self.rid if session is self.session else None


@define
class User:
    """Everything indexed per user: its sessions (devices) and the calls it is a party of."""

    sessions: dict[str, Session] = field(factory=dict)
    calls: set[str] | frozenset[str] = NOTHING


@define(eq=False)
class Switchboard:
    """Routes signaling between sessions and runs every call's state machine."""

    config: Config
    authenticate: Callable[[Hello], str]
    """Returns the user id for a `hello`, or raises `AuthError`."""
    ice_servers: Callable[[str], list[IceServer]]
    """The ICE servers (with fresh credentials) to hand a user."""
    ice_refresh_in: Callable[[], float | None]
    """Seconds until those credentials should be refreshed, or None if they never expire."""
    new_token: Callable[[int], str] = secrets.token_urlsafe

    _links: dict[ConnId, Link] = field(factory=dict, init=False)
    _sessions: dict[str, Session] = field(factory=dict, init=False)
    _by_resume_token: dict[str, Session] = field(factory=dict, init=False)
    _users: dict[str, User] = field(factory=dict, init=False)
    _calls: dict[str, Call] = field(factory=dict, init=False)
    _rooms: dict[str, Room] = field(factory=dict, init=False)
    _watchers: dict[str, set[Session]] = field(factory=dict, init=False)
    """Per watched user, the sessions subscribed to its presence."""
    _published: dict[str, UserStatus] = field(factory=dict, init=False)
    """Per watched user, the status its watchers were last told."""
    _last_seen: LastSeen = field(factory=LastSeen, init=False)
    _auth_throttle: AuthThrottle = field(factory=AuthThrottle, init=False)
    _out: list[Action] = field(factory=list, init=False)
    received: Counter[str] = field(factory=Counter, init=False)
    """Client messages decoded, by type (for metrics)."""
    errors: Counter[str] = field(factory=Counter, init=False)
    """`error` messages sent, by code (for metrics)."""
    _encoded: ServerMessage | None = field(default=None, init=False)
    """The message last sent: it is immutable, so it is sent to the next session (a broadcast,
    `call_ended` to every party) without being encoded again."""
    _unnumbered: bytes = field(default=b"", init=False)
    """`_encoded`, encoded without `seq`: each session's frame splices its own `seq` in."""
    _overflowed: list[Session] = field(factory=list, init=False)
    _wall: float = field(default=0.0, init=False)
    """The Unix time of the event being handled, as the shell passed it (`receive`, `timer_fired`):
    presence's `last_seen` is the only thing that needs it; everything else runs on `now`."""

    # -----------------------------------------------------------------------------------------
    # What the shell calls

    def connect(self, conn: ConnId, now: float, address: str = "") -> list[Action]:
        """A connection opened, from `address` (the client's IP address, as far as known)."""
        bucket = TokenBucket.full(self.config.messages_per_second, self.config.message_burst, now)
        self._links[conn] = Link(conn=conn, bucket=bucket, address=address_key(address))
        return [StartTimer(HelloTimer(conn), now + self.config.hello_timeout_ms / 1000)]

    def receive(self, conn: ConnId, data: bytes, now: float, wall: float) -> list[Action]:
        """A text message arrived on `conn` at monotonic `now`, Unix time `wall`.

        An exception other than a refusal is a bug: it is logged once and the sender is answered
        `internal`; the connection stays open and nobody else is told anything. The actions the
        message decided before it failed are still returned, since the changes they go with have
        been made: undoing those needs transactions the core does not have yet.
        """
        link = self._links.get(conn)
        if link is None:  # already closed by us; the shell may still be draining its socket
            return []
        self._begin()
        self._wall = wall
        if not link.bucket.take(now):  # before decoding: a refusal costs more than a message
            self._rate_limited(link, rid_of(data))
            return self._end()
        try:
            message = decode_client(data)
        except ProtocolError as exc:
            self._error(link, exc.code, exc.message, exc.path, exc.rid)
            return self._end()
        self.received[message.TYPE] += 1
        try:
            self._dispatch(link, message, now)
        except Exception:  # a bug, not a refusal: contained to this message and its sender
            log.exception("internal error handling %s on connection %s", message.TYPE, conn)
            self._error(link, "internal", INTERNAL_ERROR_MESSAGE, None, message.rid)
        return self._end()

    def receive_binary(self, conn: ConnId, now: float) -> list[Action]:
        link = self._links.get(conn)
        if link is None:
            return []
        self._begin()
        if link.bucket.take(now):
            reason = "binary frames are not accepted: send JSON as text frames"
            self._error(link, "invalid_message", reason, None, None)
        else:
            self._rate_limited(link, None)
        return self._end()

    def disconnect(self, conn: ConnId, now: float) -> list[Action]:
        """The connection is gone (clean close or not): its session enters the grace period."""
        link = self._links.pop(conn, None)
        if link is not None and link.session is None:
            return [CancelTimer(HelloTimer(conn)), CancelTimer(HelloDelayTimer(conn))]
        if link is None or link.session is None or link.session.conn != conn:
            return []
        self._begin()
        self._detach(link.session, now)
        return self._end()

    def timer_fired(self, key: TimerKey, now: float, wall: float) -> list[Action]:
        """A timer the core started has expired. Stale firings (already resolved) are ignored.

        A bug while handling it is logged and the actions decided so far are returned: there is
        no sender to answer, and letting it escape would take down the call's nursery."""
        self._begin()
        self._wall = wall
        try:
            self._timer(key, now)
        except Exception:
            log.exception("internal error handling timer %r", key)
        return self._end()

    # -----------------------------------------------------------------------------------------
    # Introspection, for the shell's statistics and for tests

    def call_state(self, call_id: str) -> CallState | None:
        call = self._calls.get(call_id)
        return None if call is None else call.state

    def statistics(self) -> dict[str, int]:
        return {
            "connections": len(self._links),
            "sessions": len(self._sessions),
            "users": len(self._users),
            "calls": len(self._calls),
            "rooms": len(self._rooms),
            "watched_users": len(self._watchers),
        }

    # -----------------------------------------------------------------------------------------
    # Plumbing

    def _begin(self) -> None:
        self._out = []

    def _end(self) -> list[Action]:
        """The actions of the event just handled.

        Sessions whose replay buffer overflowed while they were away are ended here, after the
        event's own work, so ending one never happens in the middle of another change.
        """
        while self._overflowed:
            session = self._overflowed.pop()
            if session.session_id in self._sessions:
                self._end_session(session)
        return self._out

    def _send(self, session: Session, message: ServerMessage) -> None:
        """Number `message` in `session`'s sequence and send it (or keep it, if it is away)."""
        if message is not self._encoded:  # else the same to another session: a room broadcast
            self._encoded, self._unnumbered = message, encode(message)
        try:
            send = session.deliver(with_seq(self._unnumbered, session.next_seq))
        except ReplayOverflow:
            self._overflowed.append(session)
            return
        if send is not None:
            self._out.append(send)

    def _error(
        self, link: Link, code: ErrorCode, message: str, path: str | None, rid: str | None
    ) -> None:
        error = Error(code=code, message=message, path=path, rid=rid)
        self.errors[code] += 1
        if link.session is None:
            self._send_unnumbered(link.conn, error)
        else:
            self._send(link.session, error)

    def _rate_limited(self, link: Link, rid: str | None) -> None:
        limit = f"{self.config.messages_per_second}/s, bursts of {self.config.message_burst}"
        self._error(link, "rate_limited", f"too many messages ({limit})", None, rid)

    def _send_unnumbered(self, conn: ConnId, message: ServerMessage) -> None:
        """Send outside the session's sequence: not replayed (`welcome`, `pong`, `error`s
        before `hello`)."""
        self._out.append(Send(conn, encode(message)))

    def _dispatch(self, link: Link, message: ClientMessage, now: float) -> None:
        """Hand `message` to its handler; a refusal is answered with an `error`."""
        session = link.session
        if session is None:
            if isinstance(message, Hello):
                self._hello(link, message, now)
            else:
                self._error(link, "not_authenticated", "send hello first", "/type", message.rid)
            return
        try:
            if isinstance(message, (IceCandidate, SdpOffer, SdpAnswer)):
                self._relay(session, message)  # most of the traffic: spare it the match below
                return
            match message:
                case Hello():
                    reason = "already authenticated: hello is sent once"
                    self._error(link, "invalid_state", reason, "/type", message.rid)
                case Ping():
                    self._send_unnumbered(link.conn, Pong(ts=message.ts, rid=message.rid))
                case Ack():
                    self._acknowledge(session, message)
                case Bye():
                    self._end_session(session)
                    self._links.pop(link.conn, None)
                    self._out.append(Close(link.conn, CLOSE_NORMAL, "bye"))
                case CallInitiate():
                    self._initiate(session, message, now)
                case CallAnswer() | CallJoin():
                    self._answer(session, message, now)
                case CallReject():
                    self._reject(session, message, now)
                case CallInvite():
                    self._invite(session, message, now)
                case Hangup():
                    self._hangup(session, message)
                case SdpOffer() | SdpAnswer() | IceCandidate():
                    self._relay(session, message)
                case RoomJoin():
                    self._room_join(session, message)
                case RoomLeave():
                    self._room_leave(session, message)
                case RoomBroadcast():
                    self._room_broadcast(session, message, now)
                case PresenceSubscribe():
                    self._presence_subscribe(session, message)
                case PresenceUnsubscribe():
                    self._presence_unsubscribe(session, message)
                case PresenceSet():
                    session.presence = message.status
                    self._refresh_presence(session.user_id)
        except Refused as refusal:
            self._error(link, refusal.code, refusal.message, refusal.path, message.rid)

    # -----------------------------------------------------------------------------------------
    # Sessions

    def _hello(self, link: Link, hello: Hello, now: float) -> None:
        """Answer `hello` now, or once its address's sign-in throttle allows."""
        if link.delayed_hello is not None:
            reason = "a hello is already waiting for its answer"
            self._error(link, "invalid_state", reason, "/type", hello.rid)
            return
        delay = self._auth_throttle.delay(link.address, now)
        if delay > 0:
            link.delayed_hello = hello
            self._out.append(StartTimer(HelloDelayTimer(link.conn), now + delay))
        else:
            self._sign_in(link, hello, now)

    def _sign_in(self, link: Link, hello: Hello, now: float) -> None:
        try:
            user_id = self.authenticate(hello)
        except AuthError as exc:
            self._auth_throttle.failed(link.address, now)
            closing = (CLOSE_AUTH_FAILED, "authentication failed")
            self._turn_away(link, "auth_failed", str(exc), hello.rid, closing)
            return
        if hello.resume is not None and hello.last_seq is not None:
            old = self._by_resume_token.get(hello.resume)
            if old is not None and old.user_id == user_id and old.takes_token(hello.resume, now):
                if old.can_replay_after(hello.last_seq):
                    self._resume(link, old, hello, now)
                    return
                self._take_connection(old)
                self._end_session(old)
        user = self._users.get(user_id)
        if user is not None and len(user.sessions) >= self.config.max_sessions_per_user:
            limit = self.config.max_sessions_per_user
            message = f"user {user_id} already has {limit} sessions, the most allowed"
            closing = (CLOSE_POLICY, "too many sessions")
            self._turn_away(link, "session_limit", message, hello.rid, closing)
            return
        session = Session(
            session_id=self.new_token(12),
            user_id=user_id,
            device_id=hello.device_id,
            resume_token=self.new_token(24),
            replay_messages=self.config.replay_buffer_messages,
            replay_bytes=self.config.replay_buffer_bytes,
        )
        self._sessions[session.session_id] = session
        self._by_resume_token[session.resume_token] = session
        self._users.setdefault(user_id, User()).sessions[session.session_id] = session
        self._attach(link, session)
        self._welcome(session, resumed=False, rid=hello.rid, now=now)
        self._ring_new_device(session, now)
        self._refresh_presence(user_id)

    def _turn_away(
        self, link: Link, code: ErrorCode, message: str, rid: str | None, closing: tuple[int, str]
    ) -> None:
        """Refuse a `hello`: say why (an `error`), close the connection with `closing`'s code and
        reason, and forget it."""
        self._error(link, code, message, None, rid)
        self._out.append(Close(link.conn, *closing))
        self._out.append(CancelTimer(HelloTimer(link.conn)))
        del self._links[link.conn]

    def _attach(self, link: Link, session: Session) -> None:
        """`link`'s connection carries `session` from now on: its `hello` has been answered."""
        session.conn = link.conn
        link.session = session
        self._out.append(CancelTimer(HelloTimer(link.conn)))

    def _welcome(self, session: Session, *, resumed: bool, rid: str | None, now: float) -> None:
        assert session.conn is not None
        welcome = Welcome(
            user_id=session.user_id,
            session_id=session.session_id,
            resume_token=session.resume_token,
            resumed=resumed,
            ice_servers=self.ice_servers(session.user_id),
            heartbeat_ms=self.config.heartbeat_ms,
            limits=self.config.limits(),
            rid=rid,
        )
        self._send_unnumbered(session.conn, welcome)
        self._arm_ice_refresh(session, now)

    def _arm_ice_refresh(self, session: Session, now: float) -> None:
        refresh_in = self.ice_refresh_in()
        if refresh_in is not None:
            self._out.append(StartTimer(IceRefreshTimer(session.session_id), now + refresh_in))

    def _take_connection(self, session: Session) -> None:
        """A `hello` with `session`'s token takes the session from its connection, if it still
        has one (half-open, or another tab), whether the resume is honoured or not: closed with
        4002 and forgotten, so that neither its loss (a grace timer) nor what still arrives on it
        acts for the session any more."""
        if session.conn is not None:
            self._links.pop(session.conn, None)
            self._out.append(Close(session.conn, CLOSE_TAKEN_OVER, "session taken over"))

    def _resume(self, link: Link, session: Session, hello: Hello, now: float) -> None:
        assert hello.last_seq is not None and hello.resume is not None
        self._take_connection(session)
        if session.conn is None:
            self._out.append(CancelTimer(GraceTimer(session.session_id)))
            session.grace_deadline = None
        for token in session.rotate_token(
            hello.resume, self.new_token(24), now + self.config.reconnect_grace_ms / 1000
        ):
            del self._by_resume_token[token]
        self._by_resume_token[session.resume_token] = session
        if session.previous_token is not None:
            self._by_resume_token[session.previous_token] = session
        self._attach(link, session)
        self._welcome(session, resumed=True, rid=hello.rid, now=now)
        self._out.extend(session.replay_after(hello.last_seq))

    def _acknowledge(self, session: Session, ack: Ack) -> None:
        sent = session.next_seq - 1
        if ack.last_seq > sent:
            reason = f"last_seq {ack.last_seq} is ahead of the last seq sent ({sent})"
            raise Refused("invalid_state", reason, "/last_seq")
        session.acknowledge(ack.last_seq)

    def _detach(self, session: Session, now: float) -> None:
        deadline = now + self.config.reconnect_grace_ms / 1000
        session.detach(deadline)
        self._out.append(CancelTimer(IceRefreshTimer(session.session_id)))
        self._out.append(StartTimer(GraceTimer(session.session_id), deadline))

    def _end_session(self, session: Session) -> None:
        """The session is over for good: its calls go on (or end) without it."""
        del self._sessions[session.session_id]
        del self._by_resume_token[session.resume_token]
        if session.previous_token is not None:
            del self._by_resume_token[session.previous_token]
        user = self._users[session.user_id]
        del user.sessions[session.session_id]
        if session.conn is None:
            self._out.append(CancelTimer(GraceTimer(session.session_id)))
        self._out.append(CancelTimer(IceRefreshTimer(session.session_id)))
        if session.call_id is not None:
            self._leave(self._calls[session.call_id], session, "disconnected")
        for call_id in list(session.ringing):
            call = self._calls[call_id]
            party = call.parties[session.user_id]
            party.ringing_sessions.discard(session.session_id)
            discard_from(session.ringing, call_id)
            if not party.ringing_sessions:
                self._drop_out(call, party, "offline")
        for room_name in list(session.rooms):
            self._leave_room(self._rooms[room_name], session)
        for watched in session.watching:
            self._unwatch(session, watched)
        if not user.sessions:
            self._last_seen.record(session.user_id, self._unix_ms())
        self._refresh_presence(session.user_id)
        self._forget_user_if_idle(session.user_id)

    def _ring_new_device(self, session: Session, now: float) -> None:
        """A device that connects while its user is being rung starts ringing too."""
        for call_id in self._users[session.user_id].calls:
            call = self._calls[call_id]
            party = call.parties[session.user_id]
            if party.state is PartyState.RINGING:
                self._ring_device(call, party, session, now)

    # -----------------------------------------------------------------------------------------
    # Timers

    def _timer(self, key: TimerKey, now: float) -> None:
        match key:
            case HelloTimer(conn):
                link = self._links.get(conn)
                if link is not None and link.session is None and link.delayed_hello is None:
                    del self._links[conn]
                    self._out.append(Close(conn, CLOSE_HELLO_TIMEOUT, "hello timeout"))
            case HelloDelayTimer(conn):
                link = self._links.get(conn)
                if link is not None and link.delayed_hello is not None:
                    hello, link.delayed_hello = link.delayed_hello, None
                    self._sign_in(link, hello, now)
            case GraceTimer(session_id):
                session = self._sessions.get(session_id)
                deadline = None if session is None else session.grace_deadline
                if session is not None and deadline is not None and now >= deadline:
                    self._end_session(session)
            case IceRefreshTimer(session_id):
                session = self._sessions.get(session_id)
                if session is not None and session.conn is not None:
                    self._send(
                        session, IceServersUpdate(ice_servers=self.ice_servers(session.user_id))
                    )
                    self._arm_ice_refresh(session, now)
            case RingTimer(call_id, user_id):
                call = self._calls.get(call_id)
                party = None if call is None else call.parties.get(user_id)
                if call is not None and party is not None and party.state is PartyState.RINGING:
                    due = now >= party.ring_deadline  # a re-invite may have moved the deadline
                    if due:
                        self._drop_out(call, party, "ring_timeout")
            case ExpiryWarningTimer(call_id):
                call = self._calls.get(call_id)
                if call is not None and call.ends_at is not None:
                    call.apply(CallEvent.EXPIRY_WARNING)
                    ends_in_ms = max(0, round((call.ends_at - now) * 1000))
                    for party in call.joined():
                        self._send_party(
                            party, CallExpiring(call_id=call_id, ends_in_ms=ends_in_ms)
                        )
            case DurationCapTimer(call_id):
                call = self._calls.get(call_id)
                if call is not None:
                    call.apply(CallEvent.MAX_DURATION)
                    self._end_call(call, "max_duration", by=None)

    # -----------------------------------------------------------------------------------------
    # Calls

    def _initiate(self, session: Session, msg: CallInitiate, now: float) -> None:
        if msg.call_id in self._calls:
            raise Refused("call_exists", f"call {msg.call_id} already exists", "/call_id")
        room = None if msg.room is None else self._room_of_member(session, msg.room)
        if room is not None and room.call_id is not None:
            reason = f"room {room.name} already has call {room.call_id}: call_join it"
            raise Refused("call_exists", reason, "/room")
        to = room.members() if room is not None else msg.to or []
        to = [user_id for user_id in to if room is None or user_id != session.user_id]
        if room is not None and not to:
            raise Refused("user_offline", f"nobody else is in room {room.name}", "/room")
        if session.user_id in to:
            index = to.index(session.user_id)
            raise Refused("invalid_message", "a user cannot call themself", f"/to/{index}")
        if session.call_id is not None:
            raise _device_busy(session)
        if len(self._users[session.user_id].calls) >= self.config.max_calls_per_user:
            limit = self.config.max_calls_per_user
            raise Refused(
                "user_busy", f"you are already a party of {limit} calls, the most allowed"
            )
        if room is None and 1 + len(to) > self.config.max_participants:
            limit = self.config.max_participants
            raise Refused("call_full", f"a call holds at most {limit} participants", "/to")
        if room is None and len(to) == 1 and self._merge_glare(session, msg, to[0], now):
            return
        call = Call(
            call_id=msg.call_id,
            caller=session.user_id,
            media=msg.media,
            metadata=msg.metadata,
            room=msg.room,
        )
        if room is not None:
            room.call_id = call.call_id
        call.parties[session.user_id] = Party(
            user_id=session.user_id, state=PartyState.JOINED, session_id=session.session_id
        )
        self._calls[call.call_id] = call
        self._add_call(session.user_id, call.call_id)
        session.call_id = call.call_id
        self._out.append(OpenCall(call.call_id))
        self._refresh_presence(session.user_id)
        self._ring(call, to, session, msg.rid, now)

    def _ring(
        self, call: Call, user_ids: Iterable[str], by: Session, rid: str | None, now: float
    ) -> None:
        """Invite `user_ids`: ring the available, drop out the busy and the offline."""
        available: list[Party] = []
        unavailable: list[tuple[Party, DropoutReason]] = []
        for user_id in user_ids:
            party = call.parties.setdefault(user_id, Party(user_id=user_id, state=PartyState.GONE))
            call.apply(CallEvent.INVITE, party)
            self._add_call(user_id, call.call_id)
            reason = self._unavailable(user_id, call.call_id)
            if reason is None:
                available.append(party)
            else:
                unavailable.append((party, reason))
        if available:
            ringing = CallRinging(call_id=call.call_id, to=[p.user_id for p in available], rid=rid)
            self._send(by, ringing)
        for party in available:
            party.ring_deadline = now + self.config.ring_timeout_ms / 1000
            self._out.append(
                StartTimer(RingTimer(call.call_id, party.user_id), party.ring_deadline)
            )
            for session in list(self._users[party.user_id].sessions.values()):
                self._ring_device(call, party, session, now)
        for party, reason in unavailable:
            if call.state is not CallState.ENDED:
                self._drop_out(call, party, reason, Reply(by, rid))

    def _unavailable(self, user_id: str, call_id: str) -> DropoutReason | None:
        user = self._users[user_id]
        if not user.sessions:
            return "offline"
        in_a_call = any(s.call_id is not None for s in user.sessions.values())
        if in_a_call or len(user.calls - {call_id}) >= self.config.max_calls_per_user:
            return "busy"
        return None

    def _ring_device(self, call: Call, party: Party, session: Session, now: float) -> None:
        party.ringing_sessions.add(session.session_id)
        session.ringing = add_to(session.ringing, call.call_id)
        incoming = CallIncoming(
            call_id=call.call_id,
            from_=call.caller,
            participants=call.roster(),
            media=call.media,
            expires_in_ms=max(0, round((party.ring_deadline - now) * 1000)),
            metadata=call.metadata,
        )
        self._send(session, incoming)

    def _merge_glare(self, session: Session, msg: CallInitiate, callee: str, now: float) -> bool:
        """Two users calling each other at once get one call: the lesser `call_id` survives."""
        for call_id in list(self._users[session.user_id].calls):
            call = self._calls[call_id]
            mine = call.parties.get(session.user_id)
            crossed = (
                call.caller == callee
                and len(call.parties) == 2
                and mine is not None
                and mine.state is PartyState.RINGING
            )
            if not crossed or mine is None:
                continue
            if call.call_id < msg.call_id:
                self._send(session, CallEnded(call_id=msg.call_id, reason="merged", rid=msg.rid))
                self._join(call, mine, session, Reply(session, msg.rid), now)
                return True
            their_session = self._sessions[call.parties[callee].session_id or ""]
            call.apply(CallEvent.MERGE)
            self._end_call(call, "merged", by=session.user_id)
            merged = Call(
                call_id=msg.call_id, caller=session.user_id, media=msg.media, metadata=msg.metadata
            )
            merged.parties[session.user_id] = Party(
                user_id=session.user_id, state=PartyState.JOINED, session_id=session.session_id
            )
            merged.parties[callee] = Party(user_id=callee, state=PartyState.RINGING)
            self._calls[merged.call_id] = merged
            self._add_call(session.user_id, merged.call_id)
            self._add_call(callee, merged.call_id)
            session.call_id = merged.call_id
            self._out.append(OpenCall(merged.call_id))
            self._join(merged, merged.parties[callee], their_session, Reply(session, msg.rid), now)
            return True
        return False

    def _answer(self, session: Session, msg: CallAnswer | CallJoin, now: float) -> None:
        if isinstance(msg, CallJoin):
            self._admit_room_member(session, msg.call_id)
        call = self._call_of_invitee(session, msg.call_id)
        party = call.parties[session.user_id]
        if session.call_id is not None:
            raise _device_busy(session)
        if len(call.joined()) >= self.config.max_participants:
            self._drop_out(call, party, "call_full")
            limit = self.config.max_participants
            raise Refused("call_full", f"call {call.call_id} already has {limit} participants")
        self._join(call, party, session, Reply(session, msg.rid), now)

    def _admit_room_member(self, session: Session, call_id: str) -> None:
        """A member of a room may join the room's call without having been rung."""
        call = self._calls.get(call_id)
        if call is None or call.room is None or call.room not in session.rooms:
            return
        if session.call_id is not None:  # refused before the member becomes a (ringing) party
            raise _device_busy(session)
        party = call.parties.setdefault(
            session.user_id, Party(user_id=session.user_id, state=PartyState.GONE)
        )
        if party.state is PartyState.GONE:
            call.apply(CallEvent.INVITE, party)
            self._add_call(session.user_id, call_id)

    def _join(self, call: Call, party: Party, session: Session, reply: Reply, now: float) -> None:
        """`party` joins on `session`; its other devices stop ringing."""
        was_active = call.state is CallState.ACTIVE
        already_in = call.joined()
        call.apply(CallEvent.JOIN, party)
        party.session_id = session.session_id
        session.call_id = call.call_id
        self._out.append(CancelTimer(RingTimer(call.call_id, party.user_id)))
        for other_id in party.ringing_sessions - {session.session_id}:
            other = self._sessions[other_id]
            other.forget_call(call.call_id)
            self._send(
                other,
                CallEnded(call_id=call.call_id, reason="answered_elsewhere", by=party.user_id),
            )
        party.ringing_sessions.clear()
        discard_from(session.ringing, call.call_id)
        if call.ends_at is None:
            self._arm_duration_cap(call, now)
        participants = call.joined_user_ids()
        for member in call.joined():
            member_session = self._sessions[member.session_id or ""]
            echo = reply.rid_for(member_session)
            accepted = CallAccepted(
                call_id=call.call_id, by=party.user_id, participants=participants, rid=echo
            )
            self._send(member_session, accepted)
        if was_active:
            for member in already_in:
                self._send_party(
                    member, ParticipantJoined(call_id=call.call_id, user_id=party.user_id)
                )
        self._refresh_presence(party.user_id)

    def _arm_duration_cap(self, call: Call, now: float) -> None:
        cap = self.config.max_call_duration_ms / 1000
        warning = min(self.config.call_expiring_warning_ms / 1000, cap)
        call.ends_at = now + cap
        if warning > 0:
            self._out.append(StartTimer(ExpiryWarningTimer(call.call_id), call.ends_at - warning))
        self._out.append(StartTimer(DurationCapTimer(call.call_id), call.ends_at))

    def _reject(self, session: Session, msg: CallReject, now: float) -> None:
        call = self._call_of_invitee(session, msg.call_id)
        party = call.parties[session.user_id]
        self._drop_out(call, party, msg.reason, Reply(session, msg.rid))

    def _invite(self, session: Session, msg: CallInvite, now: float) -> None:
        call = self._call_of_member(session, msg.call_id)
        for index, user_id in enumerate(msg.to):
            party = call.parties.get(user_id)
            if party is not None and party.state is not PartyState.GONE:
                raise Refused(
                    "invalid_state", f"{user_id} is already {party.state}", f"/to/{index}"
                )
        if len(call.joined()) + len(msg.to) > self.config.max_participants:
            limit = self.config.max_participants
            raise Refused("call_full", f"a call holds at most {limit} participants", "/to")
        self._ring(call, msg.to, session, msg.rid, now)

    def _hangup(self, session: Session, msg: Hangup) -> None:
        call = self._call_of_member(session, msg.call_id)
        self._leave(call, session, "hangup", detail=msg.reason, rid=msg.rid)

    def _relay(self, session: Session, msg: SdpOffer | SdpAnswer | IceCandidate) -> None:
        """Pass SDP or ICE on, if the state table has a `relay` row for the call and both parties.

        The sender is a joined party: `_call_of_member` found this session joined to the call."""
        call = self._call_of_member(session, msg.call_id)
        if not CALL_RELAYS[call.state]:
            reason = f"call {call.call_id} is {call.state}: relays wait for call_accepted"
            raise IllegalTransition(reason)
        target = call.parties.get(msg.to)
        if target is None or not PARTY_RELAYS[target.state] or msg.to == session.user_id:
            raise Refused("not_in_call", f"{msg.to} is not another participant of this call", "/to")
        relayed: ServerMessage
        # Positionally, every field (call_id, from_, payload, seq): see positional_constructor.
        if isinstance(msg, IceCandidate):  # the most frequent first
            relayed = _NEW_RELAYED_ICE_CANDIDATE(msg.call_id, session.user_id, msg.candidate, None)
        elif isinstance(msg, SdpOffer):
            relayed = _NEW_RELAYED_SDP_OFFER(msg.call_id, session.user_id, msg.sdp, None)
        else:
            relayed = _NEW_RELAYED_SDP_ANSWER(msg.call_id, session.user_id, msg.sdp, None)
        self._send_party(target, relayed)

    # -----------------------------------------------------------------------------------------
    # Leaving and ending

    def _drop_out(
        self,
        call: Call,
        party: Party,
        reason: DropoutReason,
        reply: Reply | None = None,
    ) -> None:
        """An invitee leaves before joining; the call goes on while there is someone to wait for."""
        state = call.apply(CallEvent.DROPOUT, party)
        self._out.append(CancelTimer(RingTimer(call.call_id, party.user_id)))
        end_reason = END_REASON_FOR_DROPOUT[reason]
        for session_id in party.ringing_sessions:
            device = self._sessions[session_id]
            device.forget_call(call.call_id)
            echo = None if reply is None else reply.rid_for(device)
            self._send(
                device,
                CallEnded(call_id=call.call_id, reason=end_reason, by=party.user_id, rid=echo),
            )
        party.ringing_sessions.clear()
        self._unlink(party.user_id, call.call_id)
        for member in call.joined():
            member_session = self._sessions[member.session_id or ""]
            rid = None if reply is None else reply.rid_for(member_session)
            rejected = CallRejected(call_id=call.call_id, by=party.user_id, reason=reason, rid=rid)
            self._send(member_session, rejected)
        if state is CallState.ENDED:
            self._end_call(call, end_reason, by=party.user_id)

    def _leave(
        self,
        call: Call,
        session: Session,
        reason: LeaveReason,
        detail: HangupReason | None = None,
        rid: str | None = None,
    ) -> None:
        """A joined participant leaves; alone, unless that leaves nobody to talk to."""
        party = call.parties[session.user_id]
        state = call.apply(CallEvent.LEAVE, party)
        party.session_id = None
        session.forget_call(call.call_id)
        if reason == "hangup":
            self._send(
                session,
                CallEnded(
                    call_id=call.call_id, reason="hangup", by=party.user_id, detail=detail, rid=rid
                ),
            )
        if state is CallState.ENDED:
            self._end_call(call, reason, by=party.user_id, detail=detail)
        else:
            for member in call.joined():
                self._send_party(
                    member,
                    ParticipantLeft(call_id=call.call_id, user_id=party.user_id, reason=reason),
                )
        self._unlink(party.user_id, call.call_id)

    def _end_call(
        self, call: Call, reason: EndReason, by: str | None, detail: HangupReason | None = None
    ) -> None:
        """The call is over (the table has moved it to `ended`): every session still involved
        gets its one `call_ended`."""
        ended = CallEnded(call_id=call.call_id, reason=reason, by=by, detail=detail)
        for party in call.parties.values():
            devices = set(party.ringing_sessions)
            if party.session_id is not None:
                devices.add(party.session_id)
            for session_id in devices:
                session = self._sessions[session_id]
                session.forget_call(call.call_id)
                self._send(session, ended)
            party.ringing_sessions.clear()
            party.session_id = None
            self._unlink(party.user_id, call.call_id)
        assert call.state is CallState.ENDED, "only a transition of the table ends a call"
        del self._calls[call.call_id]
        room = None if call.room is None else self._rooms.get(call.room)
        if room is not None and room.call_id == call.call_id:
            room.call_id = None
        self._out.append(CloseCall(call.call_id, reason))

    def _add_call(self, user_id: str, call_id: str) -> None:
        """`user_id` is now a party of `call_id` (a user rung while offline is indexed too)."""
        user = self._users.setdefault(user_id, User())
        user.calls = add_to(user.calls, call_id)

    def _unlink(self, user_id: str, call_id: str) -> None:
        """`user_id` is no longer a party of `call_id`."""
        user = self._users.get(user_id)
        if user is not None:
            discard_from(user.calls, call_id)
        self._refresh_presence(user_id)
        self._forget_user_if_idle(user_id)

    def _forget_user_if_idle(self, user_id: str) -> None:
        user = self._users.get(user_id)
        if user is not None and not user.sessions and not user.calls:
            del self._users[user_id]

    # -----------------------------------------------------------------------------------------
    # Rooms

    def _room_join(self, session: Session, msg: RoomJoin) -> None:
        room = self._rooms.get(msg.room)
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
            room = self._rooms.setdefault(msg.room, Room(name=msg.room))
            session.rooms = add_to(session.rooms, msg.room)
            if room.add(session):
                joined = RoomMemberJoined(room=room.name, user_id=session.user_id)
                for other in room.other_users_sessions(session.user_id):
                    self._send(other, joined)
        assert room is not None
        members = room.members()
        self._send(
            session, RoomJoined(room=room.name, members=members, call_id=room.call_id, rid=msg.rid)
        )

    def _room_leave(self, session: Session, msg: RoomLeave) -> None:
        self._leave_room(self._room_of_member(session, msg.room), session)
        self._send(session, RoomLeft(room=msg.room, rid=msg.rid))

    def _leave_room(self, room: Room, session: Session) -> None:
        discard_from(session.rooms, room.name)
        if room.remove(session):
            left = RoomMemberLeft(room=room.name, user_id=session.user_id)
            for other in room.sessions.values():
                self._send(other, left)
        if not room.sessions:
            del self._rooms[room.name]

    def _room_broadcast(self, session: Session, msg: RoomBroadcast, now: float) -> None:
        room = self._room_of_member(session, msg.room)
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
        for member in room.sessions.values():
            if member is not session:
                self._send(member, message)

    def _room_of_member(self, session: Session, name: str) -> Room:
        room = self._rooms.get(name)
        if room is None or name not in session.rooms:
            raise Refused("not_in_room", f"you are not in room {name}: room_join it first", "/room")
        return room

    # -----------------------------------------------------------------------------------------
    # Presence

    def _presence_subscribe(self, session: Session, msg: PresenceSubscribe) -> None:
        new = set(msg.users) - session.watching
        if len(session.watching) + len(new) > self.config.max_presence_subscriptions:
            limit = self.config.max_presence_subscriptions
            raise Refused("limit_reached", f"a session may watch at most {limit} users", "/users")
        for user_id in dict.fromkeys(msg.users):
            session.watching = add_to(session.watching, user_id)
            self._watchers.setdefault(user_id, set()).add(session)
            current = self._presence_of(user_id, rid=msg.rid)
            self._published[user_id] = current.status
            self._send(session, current)

    def _presence_unsubscribe(self, session: Session, msg: PresenceUnsubscribe) -> None:
        for user_id in msg.users:
            if user_id in session.watching:
                discard_from(session.watching, user_id)
                self._unwatch(session, user_id)

    def _unwatch(self, session: Session, user_id: str) -> None:
        watchers = self._watchers[user_id]
        watchers.discard(session)
        if not watchers:
            del self._watchers[user_id]
            del self._published[user_id]

    def _presence_of(self, user_id: str, rid: str | None = None) -> Presence:
        user = self._users.get(user_id)
        status = merged_status(() if user is None else user.sessions.values())
        last_seen = self._last_seen.get(user_id) if status == "offline" else self._unix_ms()
        return Presence(user_id=user_id, status=status, last_seen=last_seen, rid=rid)

    def _refresh_presence(self, user_id: str) -> None:
        """Tell `user_id`'s watchers if its merged status changed; O(1) when nobody watches."""
        watchers = self._watchers.get(user_id)
        if not watchers:
            return
        current = self._presence_of(user_id)
        if self._published[user_id] == current.status:
            return
        self._published[user_id] = current.status
        for watcher in list(watchers):
            self._send(watcher, current)

    def _unix_ms(self) -> int:
        return int(self._wall * 1000)

    # -----------------------------------------------------------------------------------------
    # Lookups that explain themselves when they fail

    def _send_party(self, party: Party, message: ServerMessage) -> None:
        if party.session_id is not None:
            self._send(self._sessions[party.session_id], message)

    def _call_of_member(self, session: Session, call_id: str) -> Call:
        """The call `session` has joined, or a `Refused` saying why it is not."""
        call = self._calls.get(call_id)
        if call is not None and session.call_id == call_id:
            return call
        raise self._not_member(session, call_id, call)

    def _call_of_invitee(self, session: Session, call_id: str) -> Call:
        """A call ringing for `session`'s user, or a `Refused` saying why it is not."""
        call = self._calls.get(call_id)
        party = None if call is None else call.parties.get(session.user_id)
        if call is not None and party is not None and party.state is PartyState.RINGING:
            return call
        raise self._not_member(session, call_id, call)

    def _not_member(self, session: Session, call_id: str, call: Call | None) -> Refused:
        if call_id in session.recently_ended:
            return Refused("invalid_state", f"call {call_id} has ended", "/call_id")
        if call is None:
            return Refused("unknown_call", f"no call {call_id}", "/call_id")
        party = call.parties.get(session.user_id)
        if party is None or party.state is PartyState.GONE:
            return Refused("not_in_call", f"you are not in call {call_id}", "/call_id")
        if party.state is PartyState.RINGING:
            return Refused(
                "invalid_state", f"call {call_id} is ringing: answer or reject it first", "/call_id"
            )
        if party.session_id == session.session_id:
            return Refused("invalid_state", f"you have already joined call {call_id}", "/call_id")
        return Refused("invalid_state", f"call {call_id} is joined on another device", "/call_id")
