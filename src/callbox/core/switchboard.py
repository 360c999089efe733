"""The switchboard: the core's facade, with no I/O.

The shell feeds it what happened (a connection opened, bytes arrived, a connection was lost, a timer
fired), always with the current time, and carries out the actions it returns. Tests drive it the
same way, with no sockets and no clock: the core reads none. Monotonic time (`now`) comes with every
event; Unix time (`wall`) with the events that can tell a watcher `last_seen`.

This module decodes, rate-limits, dispatches each message to the module that owns its concern, and
writes out in order what ending a session takes; the work is theirs:

- `sessions.py`: signing in, resuming, acknowledging, losing a connection, the session's timers;
- `calls.py`: every call's lifecycle and timers; `relay.py`: SDP and ICE within a call;
- `rooms.py`: rooms and their broadcasts; `presence.py`: who watches whom;
- `store.py`: the records, behind the `Store` port; `outbox.py`: what an event sends and asks for;
- `errors.py`: refusals; `states.py`: the call state table.

A refusal is a `SignalingError` (callbox.core.errors), answered with an `error`. Any other exception
while a client message is handled is a bug: it is logged, the sender is answered `internal`, and
the connection and everyone else carry on.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from attrs import define, field

from callbox.codec import ProtocolError, decode_client, rid_of
from callbox.config import Config
from callbox.core.actions import (
    CALL_TIMERS,
    CLOSE_NORMAL,
    CLOSE_RESTART,
    CLOSE_SESSION_TERMINATED,
    CLOSE_TAKEN_OVER,
    Action,
    CancelTimer,
    ConnId,
    GraceTimer,
    HelloDelayTimer,
    HelloTimer,
    IceRefreshTimer,
    StartTimer,
    TimerKey,
)
from callbox.core.calls import Calling
from callbox.core.errors import Refused
from callbox.core.outbox import Outbox
from callbox.core.presence import Watchers
from callbox.core.relay import Relay
from callbox.core.rooms import Rooms
from callbox.core.sessions import Link, Session, Sessions, TokenBucket, held_session
from callbox.core.states import CallState
from callbox.core.store import LocalStore, Missing, Overflow, Store
from callbox.core.throttle import address_key
from callbox.messages import (
    Ack,
    Bye,
    CallAnswer,
    CallInitiate,
    CallInvite,
    CallJoin,
    CallReject,
    ClientMessage,
    Hangup,
    Hello,
    IceCandidate,
    IceServer,
    Ping,
    Pong,
    PresenceSet,
    PresenceSubscribe,
    PresenceUnsubscribe,
    RoomBroadcast,
    RoomJoin,
    RoomLeave,
    SdpAnswer,
    SdpOffer,
)

log = logging.getLogger("callbox.core")

INTERNAL_ERROR_MESSAGE = "the server failed to handle this message; it has been logged"

READ_ONLY_MESSAGES: frozenset[type[ClientMessage]] = frozenset(
    {IceCandidate, SdpOffer, SdpAnswer, Ping}
)
"""Messages whose handling changes no record (a relay, a ping): their events copy nothing for a
rollback. `TrackingStore` checks the claim under every core test."""


def _nothing() -> None:
    """An event that does nothing (see `Switchboard.timer_fired`)."""


@define(eq=False)
class TokenTape:
    """The tokens (session ids, resume tokens) drawn during an event, drawn again in the same
    order if the event is run again after `Missing`: the rerun names the same session."""

    draw: Callable[[int], str]
    drawn: list[str] = field(factory=list)
    """The tokens of the event being handled (or rolled back, to be run again)."""
    _next: int = 0

    def __call__(self, nbytes: int) -> str:
        if self._next < len(self.drawn):
            token = self.drawn[self._next]
        else:
            token = self.draw(nbytes)
            self.drawn.append(token)
        self._next += 1
        return token

    def rewind(self, *, keep: bool) -> None:
        """The event is over: `keep` its tokens for its rerun, or forget them."""
        if not keep and self.drawn:
            self.drawn = []
        self._next = 0


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
    node: str | None = field(default=None, kw_only=True)
    """In a cluster, this node's name: `welcome` carries it."""
    store: Store = field(factory=LocalStore, kw_only=True)
    outbox: Outbox = field(factory=Outbox, kw_only=True)
    """What each event decides; a test may pass one that records more."""

    received: Counter[str] = field(factory=Counter, init=False)
    """Client messages decoded, by type (for metrics)."""
    _links: dict[ConnId, Link] = field(factory=dict, init=False)
    """The connections of this process, with or without a session yet."""
    _sessions: Sessions = field(init=False)
    _calling: Calling = field(init=False)
    _relay: Relay = field(init=False)
    _rooms: Rooms = field(init=False)
    _watchers: Watchers = field(init=False)
    _tokens: TokenTape = field(init=False)

    def __attrs_post_init__(self) -> None:
        config, store, out = self.config, self.store, self.outbox
        self._tokens = TokenTape(self.new_token)
        self._watchers = Watchers(config, store, out)
        self._rooms = Rooms(config, store, out)
        self._calling = Calling(config, store, out, self._watchers)
        self._relay = Relay(store, out)
        self._sessions = Sessions(
            config=config,
            store=store,
            out=out,
            links=self._links,
            authenticate=self.authenticate,
            ice_servers=self.ice_servers,
            ice_refresh_in=self.ice_refresh_in,
            new_token=self._tokens,
            end_session=self._end_session,
            node=self.node,
        )

    # -----------------------------------------------------------------------------------------
    # What the shell calls

    def connect(self, conn: ConnId, now: float, address: str = "") -> list[Action]:
        """A connection opened, from `address` (the client's IP address, as far as known)."""
        bucket = TokenBucket.full(self.config.messages_per_second, self.config.message_burst, now)
        self._links[conn] = Link(conn=conn, bucket=bucket, address=address_key(address))
        return [StartTimer(HelloTimer(conn), now + self.config.hello_timeout_ms / 1000)]

    def receive(self, conn: ConnId, data: bytes, now: float, wall: float) -> list[Action]:
        """A text message arrived on `conn` at monotonic `now`, Unix time `wall`.

        An exception other than a refusal is a bug: the message's changes are rolled back, it is
        logged once and the sender is answered `internal`; the connection stays open and nobody
        else is told anything. `Missing` (a record not at hand) leaves everything as it was,
        the connection's rate limit included: the caller runs the same message again.
        """
        link = self._links.get(conn)
        if link is None:  # already closed by us; the shell may still be draining its socket
            return []
        self._watchers.wall = self._calling.wall = wall
        bucket = link.bucket
        tokens, updated = bucket.tokens, bucket.updated
        try:
            if not bucket.take(now):  # before decoding: a refusal costs more than a message
                return self._transact(False, self._rate_limited, link, rid_of(data))
            try:
                message = decode_client(data)
            except ProtocolError as exc:
                return self._transact(False, self._undecodable, link, exc)
            changing = type(message) not in READ_ONLY_MESSAGES
            try:
                actions = self._transact(changing, self._dispatch, link, message, now)
            except Missing:
                raise
            except Exception:  # a bug, not a refusal: contained to this message and its sender
                if self.store.reads_checked:
                    log.exception("internal error handling %s on connection %s", message.TYPE, conn)
                actions = self._transact(False, self._internal_error, link, message)
        except Missing:
            bucket.tokens, bucket.updated = tokens, updated
            raise
        self.received[message.TYPE] += 1
        return actions

    def receive_binary(self, conn: ConnId, now: float) -> list[Action]:
        link = self._links.get(conn)
        if link is None:
            return []
        bucket = link.bucket
        tokens, updated = bucket.tokens, bucket.updated
        try:
            if bucket.take(now):
                return self._transact(False, self._binary_refused, link)
            return self._transact(False, self._rate_limited, link, None)
        except Missing:
            bucket.tokens, bucket.updated = tokens, updated
            raise

    def disconnect(self, conn: ConnId, now: float) -> list[Action]:
        """The connection is gone (clean close or not): its session enters the grace period."""
        link = self._links.get(conn)
        if link is None:
            return []
        if link.session_id is None:
            del self._links[conn]
            return [CancelTimer(HelloTimer(conn)), CancelTimer(HelloDelayTimer(conn))]
        return self._transact(True, self._lost, conn, link.session_id, now)

    def connection_gone_elsewhere(self, conn: ConnId, session_id: str, now: float) -> list[Action]:
        """In a cluster, the node that held `conn`, which carried `session_id`, has died: as
        for a lost connection of this process, the session's grace period starts (unless it
        has been resumed since on another connection)."""
        return self._transact(True, self._session_lost, conn, session_id, now)

    def timer_fired(self, key: TimerKey, now: float, wall: float) -> list[Action]:
        """A timer the core started has expired. Stale firings (already resolved) are ignored.

        A bug while handling it is logged and the timer's changes are rolled back: there is no
        sender to answer, and letting it escape would take down the call's nursery. What is
        left is committed empty: a store shared by many nodes checks there that what the failed
        run read was current (a stale cache, not a bug, may have made it fail)."""
        self._watchers.wall = self._calling.wall = wall
        return self._contained(f"timer {key!r}", self._timer, key, now)

    def terminate_call(self, call_id: str, now: float, wall: float) -> list[Action]:
        """The deployer ends `call_id` (the admin API): everyone involved gets `call_ended`
        `terminated`. A call that does not exist (any more) is left alone: the actions then
        hold no `CloseCall` for it. A bug is contained as a timer's is (`timer_fired`)."""
        self._watchers.wall = self._calling.wall = wall
        return self._contained(f"terminating call {call_id!r}", self._terminate_call, call_id)

    def remove_user(self, user_id: str, now: float, wall: float) -> list[Action]:
        """The deployer removes `user_id` (the admin API): every call it is a party of ends
        at once (`terminated`, `by` the user, for the others), then every session of the user
        ends for good, as `bye` would end it (its resume token is forgotten: a later resume
        gets `resumed: false`), and each connection carrying one is closed with 4004, on
        whichever node holds it. A user with no session and no call is left alone. A bug is
        contained as a timer's is (`timer_fired`)."""
        self._watchers.wall = self._calling.wall = wall
        return self._contained(f"removing user {user_id!r}", self._remove_user, user_id)

    @property
    def tokens(self) -> TokenTape:
        """The tokens the event being handled drew: a cluster node that suspends the event
        while another runs keeps them aside with it (`callbox.cluster.node.Node`)."""
        return self._tokens

    # -----------------------------------------------------------------------------------------
    # Introspection, for the shell's statistics and for tests

    def has_session(self, conn: ConnId) -> bool:
        """Whether `conn` carries a session (its `hello` has been answered)."""
        link = self._links.get(conn)
        return link is not None and link.session_id is not None

    @property
    def errors(self) -> Counter[str]:
        """`error` messages sent, by code (for metrics)."""
        return self.outbox.errors

    def call_state(self, call_id: str) -> CallState | None:
        call = self.store.call(call_id)
        return None if call is None else call.state

    def statistics(self) -> dict[str, int]:
        return {"connections": len(self._links), **self.store.counts()}

    # -----------------------------------------------------------------------------------------
    # Dispatch

    def _transact(self, changing: bool, handle: Callable[..., None], *args: Any) -> list[Action]:
        """Run one event as a transaction: `handle(*args)` decides, and its decisions are
        committed (records kept, deliveries numbered, then this process's connections changed),
        or rolled back if it raises (`Missing` or a bug), which it passes on. `changing`:
        whether the event may change records (see `Store.changing`)."""
        store, out = self.store, self.outbox
        if changing:
            store.changing()
        out.begin()
        try:
            handle(*args)
            try:
                actions = store.commit(out.actions, out.applied)
            except Overflow as overflow:
                actions = self._end_overflowing(overflow)
        except BaseException as exc:
            store.rollback()
            out.discard()
            self._tokens.rewind(keep=isinstance(exc, Missing))
            raise
        out.applied = None
        if out.error_codes:
            out.count_errors()
        if self._tokens.drawn:
            self._tokens.rewind(keep=False)
        if out.after_commit:
            for change in out.after_commit:
                change()
            out.after_commit = []
        return actions

    def _end_overflowing(self, overflow: Overflow) -> list[Action]:
        """Within the event, end the sessions away from their connection whose replay its
        deliveries would overflow (their client could never be given every message), then
        commit: ending them may overflow others."""
        store, out = self.store, self.outbox
        while True:
            store.changing()
            for session_id in overflow.session_ids:
                self._end_session(held_session(store, session_id))
            self._drop_deliveries_to(set(overflow.session_ids))
            try:
                return store.commit(out.actions, out.applied)
            except Overflow as again:
                overflow = again

    def _contained(self, what: str, handle: Callable[..., None], *args: Any) -> list[Action]:
        """An event with no sender to answer (a timer, the admin API's) as a transaction: a
        bug is logged and its changes rolled back, and what is left is committed empty, so that
        a store shared by many nodes checks that what the failed run read was current (a stale
        cache, not a bug, may have made it fail). Letting it escape would take down a call's
        nursery, or a node's event task."""
        try:
            return self._transact(True, handle, *args)
        except Missing:
            raise
        except Exception:
            if self.store.reads_checked:
                log.exception("internal error %s", what)
            return self._transact(False, _nothing)

    def _drop_deliveries_to(self, ended: set[str]) -> None:
        """Forget what the event was to send to sessions it has ended meanwhile."""
        out = self.outbox
        out.actions = [
            action for action in out.actions if not (type(action) is tuple and action[0] in ended)
        ]

    def _client(self, link: Link) -> str | ConnId:
        """Who answers go to on `link`: its session, or the bare connection before `hello`."""
        session_id = link.session_id
        return link.conn if session_id is None else session_id

    def _rate_limited(self, link: Link, rid: str | None) -> None:
        limit = f"{self.config.messages_per_second}/s, bursts of {self.config.message_burst}"
        self.outbox.error(
            self._client(link), "rate_limited", f"too many messages ({limit})", None, rid
        )

    def _undecodable(self, link: Link, exc: ProtocolError) -> None:
        self.outbox.error(self._client(link), exc.code, exc.message, exc.path, exc.rid)

    def _binary_refused(self, link: Link) -> None:
        reason = "binary frames are not accepted: send JSON as text frames"
        self.outbox.error(self._client(link), "invalid_message", reason, None, None)

    def _internal_error(self, link: Link, message: ClientMessage) -> None:
        """Answer a message whose handling failed: it counts as applied (sent again, it would
        fail again), its changes are not (they were rolled back)."""
        to = self._client(link)
        if isinstance(to, str) and message.cseq is not None:
            self.outbox.applied = (to, message.cseq)
        self.outbox.error(to, "internal", INTERNAL_ERROR_MESSAGE, None, message.rid)

    def _lost(self, conn: ConnId, session_id: str, now: float) -> None:
        """`conn`, which carried `session_id`, is gone: unless another connection has taken
        the session over, its grace period starts."""
        self.outbox.after_commit.append(partial(self._links.pop, conn, None))
        self._session_lost(conn, session_id, now)

    def _session_lost(self, conn: ConnId, session_id: str, now: float) -> None:
        session = self.store.session(session_id)
        if session is not None and session.conn == conn:
            self._sessions.detach(session, now)

    def _dispatch(self, link: Link, message: ClientMessage, now: float) -> None:
        """Hand `message` to the module that owns it; a refusal is answered with an `error`."""
        session_id = link.session_id
        if session_id is None:
            self._before_hello(link, message, now)
            return
        session = self.store.session(session_id)  # not held_session: this is every message
        if session is None or session.conn != link.conn:
            self._ended_elsewhere(link, session)
            return
        cseq = message.cseq
        if cseq is not None:
            if cseq <= session.last_cseq:
                return  # applied before; its replies, if any, are replayed by the resume
            self.outbox.applied = (session_id, cseq)
        try:
            if isinstance(message, (IceCandidate, SdpOffer, SdpAnswer)):
                self._relay.relay(session, message)  # most of the traffic: spare it the match
                return
            match message:
                case Hello():
                    reason = "already authenticated: hello is sent once"
                    self.outbox.error(session_id, "invalid_state", reason, "/type", message.rid)
                case Ping():
                    self.outbox.send_unnumbered(link.conn, Pong(ts=message.ts, rid=message.rid))
                case Ack():
                    self._sessions.acknowledge(session, message)
                case Bye():
                    self._end_session(session)
                    self.outbox.after_commit.append(partial(self._links.pop, link.conn, None))
                    self.outbox.close(link.conn, CLOSE_NORMAL, "bye")
                case CallInitiate():
                    self._calling.initiate(session, message, now)
                case CallAnswer() | CallJoin():
                    self._calling.answer(session, message, now)
                case CallReject():
                    self._calling.reject(session, message)
                case CallInvite():
                    self._calling.invite(session, message, now)
                case Hangup():
                    self._calling.hangup(session, message)
                case RoomJoin():
                    self._rooms.join(session, message)
                case RoomLeave():
                    self._rooms.leave(session, message)
                case RoomBroadcast():
                    self._rooms.broadcast(session, message, now)
                case PresenceSubscribe():
                    self._watchers.subscribe(session, message)
                case PresenceUnsubscribe():
                    self._watchers.unsubscribe(session, message)
                case PresenceSet():
                    self._watchers.set_status(session, message)
        except Refused as refusal:
            self.outbox.error(session_id, refusal.code, refusal.message, refusal.path, message.rid)

    def _terminate_call(self, call_id: str) -> None:
        call = self.store.call(call_id)
        if call is not None:
            self._calling.terminate(call, by=None)

    def _remove_user(self, user_id: str) -> None:
        user = self.store.user(user_id)
        if user is None:
            return
        for call_id in sorted(user.calls):  # sorted: the same order on every node and rerun
            call = self.store.call(call_id)
            if call is not None:
                self._calling.terminate(call, by=user_id)
        ended: set[str] = set()
        for session in list(self.store.devices(user_id)):
            conn = session.conn
            self._end_session(session)
            ended.add(session.session_id)
            if conn is not None:
                if conn in self._links:  # else another node's: it forgets it when it closes
                    self.outbox.after_commit.append(partial(self._links.pop, conn, None))
                self.outbox.close(conn, CLOSE_SESSION_TERMINATED, "session terminated")
        self._drop_deliveries_to(ended)  # their own `call_ended`: their sockets are closing

    def _ended_elsewhere(self, link: Link, session: Session | None) -> None:
        """Another node of a cluster took the session `link` carries away from it, and this
        node has not heard yet (it was frozen, or the close is on its way): what arrives on the
        link is not applied. A resume there took the session over (or ended it): the 4002 that
        node sent this connection is this. That node found this one dead and detached the
        session: 1012, as this node would close it once it learns, and the client resumes.
        (A single process unlinks a connection as its session leaves it: never here.)"""
        self.outbox.after_commit.append(partial(self._links.pop, link.conn, None))
        if session is not None and session.conn is None:
            self.outbox.close(link.conn, CLOSE_RESTART, "node restarting")
        else:
            self.outbox.close(link.conn, CLOSE_TAKEN_OVER, "session taken over")

    def _before_hello(self, link: Link, message: ClientMessage, now: float) -> None:
        if isinstance(message, Hello):
            self._started(self._sessions.hello(link, message, now), now)
        else:
            reason = "send hello first"
            self.outbox.error(link.conn, "not_authenticated", reason, "/type", message.rid)

    def _timer(self, key: TimerKey, now: float) -> None:
        if isinstance(key, CALL_TIMERS):
            self._calling.timer_fired(key, now)
            return
        match key:
            case HelloTimer(conn):
                self._sessions.hello_timed_out(conn)
            case HelloDelayTimer(conn):
                self._started(self._sessions.throttle_passed(conn, now), now)
            case GraceTimer(session_id):
                session = self._sessions.grace_over(session_id, now)
                if session is not None:
                    self._end_session(session)
            case IceRefreshTimer(session_id):
                self._sessions.refresh_ice(session_id, now)

    # -----------------------------------------------------------------------------------------
    # A session's beginning and end, across every module

    def _started(self, session: Session | None, now: float) -> None:
        """A new session has been welcomed: its device rings for its user's ringing calls, and
        its user's watchers see it (a resume or a refusal starts nothing)."""
        if session is not None:
            self._calling.ring_new_device(session, now)
            self._watchers.refresh(session.user_id)

    def _end_session(self, session: Session) -> None:
        """The session is over for good: its calls go on (or end) without it."""
        user = self._sessions.forget(session)
        self._watchers.stop_watching(session)  # first: what follows changes others' presence
        self._calling.leave_on_end(session)
        self._rooms.leave_all(session)
        if not user.sessions:
            self._watchers.last_seen_now(session.user_id)
        self._watchers.refresh(session.user_id)
        self.store.forget_user_if_idle(session.user_id)
