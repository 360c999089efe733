"""A typed trio client for callbox servers, on trio-websocket.

Every message is checked against `schemas/` both ways: an outbound one before it is sent (a bad
one raises `ProtocolError` and never reaches the wire), an inbound one as it is read (a bad one
raises `ProtocolViolation`), and a session's messages must be numbered 1, 2, 3… without a gap.
So a program built on this client cannot speak the protocol wrongly without noticing, and a
server that does is caught at the first bad message: the conformance suite relies on that.

    async with connect("ws://127.0.0.1:8765/ws", user_id="alice") as alice:
        call_id = await alice.initiate(["bob"])
        await alice.expect(CallRinging, call_id=call_id)

The request helpers (`initiate`, `answer`, …) only send: whatever the server answers arrives
through `receive`, `expect` or `async for`, in order, so every message is seen exactly once.
A closed connection surfaces as trio-websocket's `ConnectionClosed`, unless the client was asked
to follow its URLs:

    urls = ["ws://node-a:8765/ws", "ws://node-b:8765/ws"]
    async with connect(urls, user_id="alice", reconnect=True) as alice:
        ...  # a lost connection is resumed on the next URL; SessionLost if that is not possible

The URLs are meant to be nodes of one cluster, which share sessions: a server that does not
know the session answers the resume with a new one (`SessionLost`).
"""

from __future__ import annotations

import logging
import random
import secrets
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, TypeVar

import attrs
import trio
from attrs import define, field
from trio_websocket import (
    ConnectionClosed,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from callbox.codec import ProtocolError, decode_client, decode_server, encode
from callbox.messages import (
    Ack,
    Bye,
    CallAnswer,
    CallInitiate,
    CallInvite,
    CallJoin,
    CallReject,
    ClientMessage,
    Error,
    Hangup,
    HangupReason,
    Hello,
    IceCandidate,
    IceCandidateInit,
    JSONObject,
    Limits,
    Media,
    Ping,
    Pong,
    PresenceSet,
    PresenceStatus,
    PresenceSubscribe,
    PresenceUnsubscribe,
    RejectReason,
    RoomBroadcast,
    RoomJoin,
    RoomLeave,
    SdpAnswer,
    SdpOffer,
    ServerMessage,
    Welcome,
)

__all__ = [
    "DEFAULT_MEDIA",
    "Client",
    "Connection",
    "ConnectionClosed",
    "HelloRefused",
    "ProtocolViolation",
    "SessionLost",
    "Traffic",
    "connect",
]

M = TypeVar("M", bound=ServerMessage)

log = logging.getLogger("callbox.client")

DEFAULT_MEDIA = Media(audio=True, video=True)
CLOSE_TIMEOUT_S = 2.0
"""How long closing waits for the server's side of the closing handshake."""
SHOWN_FRAME_CHARS = 400
"""How much of an offending frame an error message quotes."""
ATTEMPT_TIMEOUT_S = 10.0
"""How long one attempt to reach a server (TCP, the WebSocket handshake, `hello` to `welcome`)
may take before the next URL is tried: a frozen node accepts TCP connections and answers
nothing, and would otherwise hold the client for as long as the operating system lets a
connection wait."""
RECONNECT_FIRST_DELAY_S = 0.25
RECONNECT_MAX_DELAY_S = 5.0
"""The backoff of a client that follows its URLs (`reconnect=True`): the first delay, doubled
after each failed attempt up to this, each jittered down by up to a half (callbox.js's too), so
that the clients of a node that died do not all land on the next one in the same instant."""
MOVE_ON_CLOSE_CODES = frozenset({1001, 1012, 1013})
"""Close codes by which a server says it cannot serve us now but another may: going away (a
node shutting down), service restart, try again later. The next URL is tried at once."""
FINAL_CLOSE_CODES = frozenset({1000, 1008, 4001, 4002, 4004})
"""Close codes after which a client does not reconnect by itself: the server ended the session
(1000, after `bye`; 4004, the deployer removed the user's sessions: a resume would find nothing),
refused it (1008: too many sessions; 4001: authentication failed), or another connection took
it over (4002)."""


class ProtocolViolation(Exception):
    """The server broke the protocol: an invalid or unexpected message, or a gap in `seq`."""


class HelloRefused(Exception):
    """The server answered `hello` with an `error` (`auth_failed`, `session_limit`…)."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"hello refused: {error.code}: {error.message}")
        self.error = error


class SessionLost(Exception):
    """A client following its URLs (`reconnect=True`) lost its connection and could reconnect,
    but not resume: the server it reached started a new session (`welcome.resumed` false).
    It does when it does not share the old server's sessions, or when the client came back
    after the grace period.

    Raised once, by the `receive`, `expect` or `send` that noticed (by each, when a reader
    and a sender in two tasks both did), so that no one goes on waiting for a message of the
    old session, or sends one into the new. The client is already on the new session: its
    calls and rooms are gone, numbering restarted at 1, and it can be used on at once (to
    rejoin rooms, say). The message `send` was sending was not sent.
    """

    def __init__(self, url: str, welcome: Welcome) -> None:
        super().__init__(
            f"the session was lost: {url} did not resume it and started a new one"
            f" ({welcome.session_id})"
        )
        self.url = url
        """The server that started the new session."""
        self.welcome = welcome
        """The new session's `welcome`."""


@define
class Traffic:
    """Messages by type, both ways, over every connection sharing it: what a run exercised."""

    sent: Counter[str] = field(factory=Counter)
    received: Counter[str] = field(factory=Counter)
    """Server messages that were valid against the schemas."""
    invalid: int = 0
    """Server frames that were not."""


class Connection:
    """One WebSocket to a callbox server, before or after `hello`, messages typed and checked.

    Use it directly for what comes before a session (a refused `hello`, a message sent before
    it); everything else goes through `Client`.
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        nursery: trio.Nursery,
        url: str,
        traffic: Traffic,
        release: trio.Event,
        released: trio.Event,
    ) -> None:
        self.ws = ws
        """The WebSocket itself, for what the protocol does not cover."""
        self.url = url
        self.traffic = traffic
        self.name = "client"
        """Who this is in error messages: the user (and device) once welcomed."""
        self.awaiting: str | None = None
        """What `expect` or `wait_closed` is waiting for, so a timeout can say it."""
        self._nursery = nursery
        self._release, self._released = release, released

    @classmethod
    async def open(
        cls, nursery: trio.Nursery, url: str, *, traffic: Traffic | None = None
    ) -> Connection:
        """Connects; the connection lives in a task of `nursery` until `aclose`."""
        release, released = trio.Event(), trio.Event()
        ws = await nursery.start(_hold_open, url, release, released)
        return cls(
            ws,
            nursery=nursery,
            url=url,
            traffic=traffic or Traffic(),
            release=release,
            released=released,
        )

    async def reopen(self, url: str | None = None) -> Connection:
        """A new connection to the same server (or to `url`), sharing this one's nursery and
        traffic."""
        return await Connection.open(self._nursery, url or self.url, traffic=self.traffic)

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed (by either side), else None."""
        return None if self.ws.closed is None else self.ws.closed.code

    @property
    def closed_by_us(self) -> bool:
        """Whether `aclose` was called: a close code then says nothing about the server."""
        return self._release.is_set()

    async def send(self, message: ClientMessage) -> None:
        """Sends `message` after checking it against its schema (`ProtocolError` if invalid)."""
        data = encode(message)
        decode_client(data)
        await self.ws.send_message(data.decode())
        self.traffic.sent[message.TYPE] += 1

    async def send_frame(self, data: str | bytes) -> None:
        """Sends a frame as it is, unchecked: for testing how a server handles bad input."""
        await self.ws.send_message(data)

    async def receive(self) -> ServerMessage:
        """The next message, checked against its schema."""
        frame = await self.ws.get_message()
        if isinstance(frame, bytes):
            self.traffic.invalid += 1
            raise ProtocolViolation(f"{self.name} got a binary frame: the server sends text only")
        try:
            message = decode_server(frame)
        except ProtocolError as error:
            self.traffic.invalid += 1
            shown = frame[:SHOWN_FRAME_CHARS]
            raise ProtocolViolation(
                f"{self.name} got an invalid message ({error.message}): {shown}"
            ) from None
        self.traffic.received[message.TYPE] += 1
        return message

    async def expect(self, kind: type[M], **fields: object) -> M:
        """The next message, which must be a `kind` with these field values."""
        return await _expect(self, self.receive, kind, fields)

    async def wait_closed(self) -> int:
        """Reads (and checks) what the server still sends until it closes; its close code."""
        with _awaiting(self, "the server to close the connection"), suppress(ConnectionClosed):
            while True:
                await self.receive()
        assert self.ws.closed is not None
        return self.ws.closed.code

    async def aclose(self) -> None:
        """Closes the connection, closing handshake and all (idempotent); bounded and shielded,
        so it also runs when the caller is being cancelled."""
        self._release.set()
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await self._released.wait()


async def _hold_open(
    url: str,
    release: trio.Event,
    released: trio.Event,
    *,
    task_status: trio.TaskStatus[WebSocketConnection] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keeps a connection open until `release`. Closing through trio-websocket's own context
    manager lets its reader finish the closing handshake: cancelling the reader instead can
    leave the server waiting for a close frame that never comes."""
    try:
        async with open_websocket_url(url, disconnect_timeout=CLOSE_TIMEOUT_S) as ws:
            task_status.started(ws)
            await release.wait()
    except DisconnectionTimeout:
        pass  # the server did not finish closing: the connection is dropped all the same
    finally:
        released.set()


UNAPPLIED_KEPT = 1024
"""Numbered messages a `Client` keeps to send again after a resume: far more than a lost
connection can swallow between two messages the server applied."""


class Client:
    """A session on a callbox server: `hello` done, `welcome` received, `seq` tracked.

    It knows one URL or several (`urls`, nodes of one cluster): `resume` goes on to the next
    one, round-robin, and with `reconnect` a lost connection is resumed that way by itself.
    """

    def __init__(
        self,
        connection: Connection,
        hello: Hello,
        welcome: Welcome,
        *,
        urls: Sequence[str] = (),
        reconnect: bool = False,
    ) -> None:
        self.connection = connection
        """The current connection; `resume` replaces it."""
        _name(connection, hello, welcome)
        self.welcome = welcome
        """The latest `welcome`: its `resume_token` is the one to resume with."""
        self.urls = tuple(urls) or (connection.url,)
        """Every server this client may use, in the order it moves through them."""
        self.reconnect = reconnect
        """Whether a lost connection is resumed by itself (see `receive` and `send`)."""
        self.last_seq = 0
        """The `seq` of the last session message received."""
        self.last_cseq = 0
        """The `cseq` of the last message this client numbered in the session."""
        self._unapplied: deque[ClientMessage] = deque(maxlen=UNAPPLIED_KEPT)
        """The last numbered messages sent, oldest first: after a resume, those above the
        welcome's `last_cseq` never reached the server and are sent again."""
        self._hello = hello
        self._retired: list[Connection] = []
        self._index = self.urls.index(connection.url) if connection.url in self.urls else 0
        self._leaving = False
        """Set by `bye`: the connection's end is the session's, not to be followed."""
        self._in_order = trio.Lock()
        """Held to number and write a message, and to resume the session (which writes again
        what the server did not apply), so that numbered messages reach the server in `cseq`
        order whichever tasks send them: it applies a `cseq` only above the last it applied,
        and takes the others for repeats. Also: one task resumes a lost connection (`_follow`).
        """

    @classmethod
    async def open(
        cls,
        nursery: trio.Nursery,
        url: str | Sequence[str],
        *,
        user_id: str | None = None,
        token: str | None = None,
        device_id: str | None = None,
        traffic: Traffic | None = None,
        reconnect: bool = False,
    ) -> Client:
        """Connects and says `hello`; the connection's background task runs in `nursery`.

        `url` is one URL or several: they are tried in order until one welcomes us, a URL
        that cannot be reached, closes before `welcome` or is silent for `ATTEMPT_TIMEOUT_S`
        being left for the next; the last failure is raised if none does. Raises
        `HelloRefused` at once if a server answers with an `error` instead of `welcome`
        (another would refuse the same `hello`). `reconnect`: see `receive`.
        """
        urls = _urls(url)
        shared = Traffic() if traffic is None else traffic
        hello = Hello(user_id=user_id, token=token, device_id=device_id)

        async def open_connection(url: str) -> Connection:
            return await Connection.open(nursery, url, traffic=shared)

        _, connection, welcome = await _welcome_from_any(
            open_connection, urls, 0, hello, patient=False
        )
        return cls(connection, hello, welcome, urls=urls, reconnect=reconnect)

    @property
    def url(self) -> str:
        """The URL of the current connection."""
        return self.connection.url

    @property
    def user_id(self) -> str:
        return self.welcome.user_id

    @property
    def limits(self) -> Limits:
        return self.welcome.limits

    # Receiving ------------------------------------------------------------------------------

    async def receive(self) -> ServerMessage:
        """The next message; a session message must carry the next `seq`.

        With `reconnect`, a connection lost before the message came is resumed on the next
        URL (see `_follow`), the replay then arriving here as if nothing had happened; if the
        session could not be resumed, `SessionLost`. Without it, or after a close that ends
        the session (`FINAL_CLOSE_CODES`), `ConnectionClosed`.
        """
        while True:
            connection, session_id = self.connection, self.welcome.session_id
            try:
                message = await connection.receive()
            except ConnectionClosed as closed:
                await self._follow(closed, connection, session_id)
                continue
            break
        if isinstance(message, Welcome):
            raise ProtocolViolation(f"{self.connection.name} got a welcome without a hello")
        if isinstance(message, Pong) or (
            isinstance(message, Error) and message.code == "unavailable" and message.seq is None
        ):  # the connection's, not the session's: a cluster node's store is out of reach
            return message
        if message.seq != self.last_seq + 1:
            raise ProtocolViolation(
                f"{self.connection.name} expected seq {self.last_seq + 1}, got {_wire(message)}"
            )
        self.last_seq = message.seq
        return message

    def __aiter__(self) -> AsyncIterator[ServerMessage]:
        """Every message until the connection closes."""
        return self._messages()

    async def _messages(self) -> AsyncIterator[ServerMessage]:
        while True:
            try:
                message = await self.receive()
            except ConnectionClosed:
                return
            yield message

    async def expect(self, kind: type[M], **fields: object) -> M:
        """The next message, which must be a `kind` with these field values (by attribute
        name: `from_` for the wire's `from`), else `ProtocolViolation` saying what came."""
        return await _expect(self.connection, self.receive, kind, fields)

    # The session ------------------------------------------------------------------------------

    async def send(self, message: ClientMessage) -> None:
        """Sends `message` after checking it against its schema (`ProtocolError` if invalid),
        numbered with the session's next `cseq` unless it belongs to the connection (`hello`,
        `ping`) or carries a `cseq` already (a test sending one again on purpose).

        With `reconnect`, a connection found closed is resumed first, as in `receive`.

        Tasks may send at once: each message is numbered and written in turn, and not while
        another task resumes the session (`_in_order`).
        """
        async with self._in_order:
            if message.cseq is None and not isinstance(message, (Hello, Ping)):
                self.last_cseq += 1
                numbered: Any = message  # every other client message has a `cseq` field
                message = attrs.evolve(numbered, cseq=self.last_cseq)
                self._unapplied.append(message)
            connection, session_id = self.connection, self.welcome.session_id
            try:
                await connection.send(message)
            except ConnectionClosed as closed:
                # Kept past this block without its traceback, which holds this frame: the
                # cycle would keep the lost connection's socket open until the cycle collector
                # runs (trio-websocket leaves the socket of a connection the server closed to
                # be collected), and the server waiting for its end meanwhile.
                lost = closed.with_traceback(None)
            else:
                return
        await self._follow(lost, connection, session_id)
        if message.cseq is None:  # a numbered one was sent again by the resume
            await self.connection.send(message)

    async def resume(self, *, last_seq: int | None = None, token: str | None = None) -> Welcome:
        """Reconnects with `hello {resume, last_seq}` and returns the new `welcome`.

        The next URL is tried first, then the others round-robin, each once (with one URL:
        that one), until one welcomes us; the last failure is raised if none does. `last_seq`
        defaults to the last one received, `token` to the latest welcome's `resume_token`. If
        `resumed`, the server replays what followed it through `receive`, and the numbered
        messages the server never applied (above `welcome.last_cseq`; the last
        `UNAPPLIED_KEPT` are kept) are sent again, in order, before this returns; if not, a
        new session started and numbering restarts. The previous connection is left alone: a
        server still holding it closes it with 4002.
        """
        async with self._in_order:
            return await self._resume(last_seq=last_seq, token=token)

    async def _resume(
        self,
        *,
        last_seq: int | None = None,
        token: str | None = None,
        patient: bool = False,
        moved_on: bool = False,
    ) -> Welcome:
        """`resume`; `patient` and `moved_on` as `_welcome_from_any` takes them."""
        claimed = self.last_seq if last_seq is None else last_seq
        resume = self.welcome.resume_token if token is None else token
        hello = attrs.evolve(self._hello, resume=resume, last_seq=claimed)
        self._index, connection, self.welcome = await _welcome_from_any(
            self.connection.reopen,
            self.urls,
            self._index + 1,
            hello,
            patient=patient,
            moved_on=moved_on,
        )
        _name(connection, hello, self.welcome)
        previous, self.connection = self.connection, connection
        if previous.close_code is None:
            self._retired.append(previous)  # left alone, for the server to close (4002)
        else:
            await previous.aclose()  # closed already: only its task is left to end
        self.last_seq = claimed if self.welcome.resumed else 0
        if self.welcome.resumed:
            applied = self.welcome.last_cseq or 0
            for message in [m for m in self._unapplied if (m.cseq or 0) > applied]:
                await connection.send(message)
        else:
            self.last_cseq = 0
            self._unapplied.clear()
        return self.welcome

    async def _follow(
        self, closed: ConnectionClosed, connection: Connection, session_id: str
    ) -> None:
        """After `connection` (of session `session_id`) closed under a `receive` or `send`:
        with `reconnect`, resume on the next URL, trying them round-robin with a backoff until
        one welcomes us (bound it with a trio timeout if you must); `SessionLost` if that server
        started a new session. Otherwise, or if the close ended the session (`bye`,
        `FINAL_CLOSE_CODES`), `closed` is raised again.

        When a reader and a sender (two tasks) both find the connection lost, one resumes and
        the other waits for it, then goes on with the new connection (or gets `SessionLost`
        too). Two resumes would each take the session over: the later one closes the earlier's
        connection (4002) under whoever reads it, and sets `last_seq` back behind what was read
        (bench/chaos.py found both). A message sent meanwhile waits too (`_in_order`).
        """
        async with self._in_order:
            if self.connection is not connection:  # another task followed already
                if self.welcome.session_id != session_id:
                    raise SessionLost(self.url, self.welcome)
                return
            code = _close_code(closed)
            by_us = connection.closed_by_us
            if not self.reconnect or self._leaving or (not by_us and code in FINAL_CLOSE_CODES):
                raise closed
            lost = self.url
            welcome = await self._resume(
                patient=True, moved_on=not by_us and code in MOVE_ON_CLOSE_CODES
            )
        outcome = "resumed the session" if welcome.resumed else "started a new session"
        log.info("connection to %s closed (%s): %s %s", lost, code, self.url, outcome)
        if not welcome.resumed:
            raise SessionLost(self.url, welcome)

    async def ack(self, *, rid: str | None = None) -> None:
        """Tells the server every message up to `last_seq` has been processed, so it need not
        hold them for a resume any longer (no reply). Worth sending now and then on a session
        that receives much, e.g. every `limits.replay_buffer_messages // 4` messages."""
        await self.send(Ack(last_seq=self.last_seq, rid=rid))

    async def drop(self) -> None:
        """Closes the connection without `bye`, as a lost network would: the session stays
        resumable for `limits.reconnect_grace_ms`."""
        await self.connection.aclose()

    async def bye(self, *, rid: str | None = None) -> int:
        """Ends the session (no resume); reads what the server still sends, returns its close
        code (1000 from a conformant server)."""
        self._leaving = True
        await self.send(Bye(rid=rid))
        async for _ in self:
            pass
        assert self.connection.close_code is not None
        return self.connection.close_code

    async def ping(self, ts: float | None = None, *, rid: str | None = None) -> Pong:
        """Pings and returns the pong, which must be the next message: so this also proves that
        nothing the server sent before answering is left unread."""
        await self.send(Ping(ts=ts, rid=rid))
        return await self.expect(Pong, ts=ts, rid=rid)

    async def aclose(self) -> None:
        """Leaves: `bye` if still connected, so no session lingers, then closes every connection
        this client opened. Bounded and shielded, so it also runs during cancellation."""
        if self.connection.close_code is None:
            with (
                trio.move_on_after(CLOSE_TIMEOUT_S, shield=True),
                suppress(ConnectionClosed, ProtocolViolation),
            ):
                await self.bye()
        for connection in (*self._retired, self.connection):
            await connection.aclose()

    # Requests: each sends one message; the server's answers arrive through receive ------------

    async def initiate(
        self,
        to: list[str] | None = None,
        *,
        room: str | None = None,
        media: Media = DEFAULT_MEDIA,
        call_id: str | None = None,
        metadata: JSONObject | None = None,
        rid: str | None = None,
    ) -> str:
        """Calls the users `to` (or every other member of `room`); returns the call id, a new
        random one unless given."""
        call_id = call_id or f"c-{secrets.token_hex(8)}"
        await self.send(
            CallInitiate(call_id=call_id, to=to, room=room, media=media, metadata=metadata, rid=rid)
        )
        return call_id

    async def answer(
        self, call_id: str, *, media: Media | None = None, rid: str | None = None
    ) -> None:
        await self.send(CallAnswer(call_id=call_id, media=media, rid=rid))

    async def reject(
        self, call_id: str, reason: RejectReason = "declined", *, rid: str | None = None
    ) -> None:
        await self.send(CallReject(call_id=call_id, reason=reason, rid=rid))

    async def hangup(
        self, call_id: str, reason: HangupReason | None = None, *, rid: str | None = None
    ) -> None:
        await self.send(Hangup(call_id=call_id, reason=reason, rid=rid))

    async def invite(self, call_id: str, to: list[str], *, rid: str | None = None) -> None:
        await self.send(CallInvite(call_id=call_id, to=to, rid=rid))

    async def join(self, call_id: str, *, rid: str | None = None) -> None:
        await self.send(CallJoin(call_id=call_id, rid=rid))

    async def offer(self, call_id: str, to: str, sdp: str, *, rid: str | None = None) -> None:
        await self.send(SdpOffer(call_id=call_id, to=to, sdp=sdp, rid=rid))

    async def answer_sdp(self, call_id: str, to: str, sdp: str, *, rid: str | None = None) -> None:
        await self.send(SdpAnswer(call_id=call_id, to=to, sdp=sdp, rid=rid))

    async def candidate(
        self, call_id: str, to: str, candidate: IceCandidateInit | None, *, rid: str | None = None
    ) -> None:
        """Trickles an ICE candidate; `None` is end-of-candidates."""
        await self.send(IceCandidate(call_id=call_id, to=to, candidate=candidate, rid=rid))

    async def room_join(self, room: str, *, rid: str | None = None) -> None:
        await self.send(RoomJoin(room=room, rid=rid))

    async def room_leave(self, room: str, *, rid: str | None = None) -> None:
        await self.send(RoomLeave(room=room, rid=rid))

    async def room_broadcast(self, room: str, data: Any, *, rid: str | None = None) -> None:
        await self.send(RoomBroadcast(room=room, data=data, rid=rid))

    async def presence_subscribe(self, users: list[str], *, rid: str | None = None) -> None:
        await self.send(PresenceSubscribe(users=users, rid=rid))

    async def presence_unsubscribe(self, users: list[str], *, rid: str | None = None) -> None:
        await self.send(PresenceUnsubscribe(users=users, rid=rid))

    async def presence_set(self, status: PresenceStatus, *, rid: str | None = None) -> None:
        await self.send(PresenceSet(status=status, rid=rid))


@asynccontextmanager
async def connect(
    url: str | Sequence[str],
    *,
    user_id: str | None = None,
    token: str | None = None,
    device_id: str | None = None,
    traffic: Traffic | None = None,
    reconnect: bool = False,
) -> AsyncIterator[Client]:
    """A session for the duration of the block; leaving it says `bye` and closes.

    `token` is the JWT a server with a secret requires; `user_id` is for development mode.
    `url` may be several URLs (nodes of one cluster): see `Client.open`, and `Client.receive`
    for `reconnect`. An exception raised in the block comes out as itself, not wrapped in an
    ExceptionGroup.
    """
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            client = await Client.open(
                nursery,
                url,
                user_id=user_id,
                token=token,
                device_id=device_id,
                traffic=traffic,
                reconnect=reconnect,
            )
            try:
                yield client
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Only the block can raise (the connections' reader tasks do not): unwrap its error.
        if len(group.exceptions) != 1:
            raise
        error = group.exceptions[0]
    if error is not None:
        raise error


def _urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """One URL or several, as a tuple; none is a mistake of the caller's."""
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not urls:
        raise ValueError("no URL to connect to")
    return urls


async def _welcome_from_any(
    open_connection: Callable[[str], Awaitable[Connection]],
    urls: Sequence[str],
    start: int,
    hello: Hello,
    *,
    patient: bool,
    moved_on: bool = False,
) -> tuple[int, Connection, Welcome]:
    """Says `hello` on a connection to `urls[start]`, then to the next ones round-robin,
    until one welcomes it; returns that URL's index, the connection and the welcome.

    A URL that cannot be reached (refused, not resolved, rejected, closed before `welcome`,
    or silent for `ATTEMPT_TIMEOUT_S`) is left for the next. Not `patient`: each URL once,
    then the last failure is raised. `patient` (a client following its URLs): rounds without
    end, waiting a backoff before each attempt, except after a close by which a server said
    another may serve us (`MOVE_ON_CLOSE_CODES`; `moved_on`: the lost connection's close
    did), as long as not every URL turned us away so since the last wait. `HelloRefused`
    comes out at once: the other servers would refuse the same `hello`.
    """
    failures = 0
    turned_away = 1 if moved_on else 0
    index = start % len(urls)
    while True:
        if patient and not 0 < turned_away < len(urls):
            await trio.sleep(_backoff(failures))
            turned_away = 0
        try:
            with trio.fail_after(ATTEMPT_TIMEOUT_S):
                connection = await open_connection(urls[index])
                welcome = await _handshake(connection, hello)
        except (HandshakeError, ConnectionClosed, OSError, trio.TooSlowError) as error:
            log.debug("could not reach %s: %r", urls[index], error)
            failures += 1
            if not patient and failures == len(urls):
                raise
            turned_away = turned_away + 1 if _close_code(error) in MOVE_ON_CLOSE_CODES else 0
            index = (index + 1) % len(urls)
            continue
        return index, connection, welcome


def _close_code(error: BaseException) -> int | None:
    """The close code a `ConnectionClosed` carries, else None."""
    if isinstance(error, ConnectionClosed) and error.reason is not None:
        return error.reason.code
    return None


def _backoff(failures: int) -> float:
    """Seconds to wait before an attempt after `failures` failed ones, jittered."""
    delay = min(RECONNECT_MAX_DELAY_S, RECONNECT_FIRST_DELAY_S * 2.0 ** min(failures, 16))
    return delay * random.uniform(0.5, 1.0)


async def _handshake(connection: Connection, hello: Hello) -> Welcome:
    """Sends `hello` and reads the `welcome`; closes the connection if there is none."""
    try:
        return await _welcome(connection, hello)
    except BaseException:
        await connection.aclose()
        raise


def _name(connection: Connection, hello: Hello, welcome: Welcome) -> None:
    """Names a welcomed connection after its user and device, for error messages."""
    device = f"/{hello.device_id}" if hello.device_id else ""
    connection.name = f"{welcome.user_id}{device}"


async def _welcome(connection: Connection, hello: Hello) -> Welcome:
    await connection.send(hello)
    message = await connection.receive()
    if isinstance(message, Error):
        raise HelloRefused(message)
    fields = {"rid": hello.rid}
    return _check(connection.name, message, Welcome, fields, _describe(Welcome, fields))


async def _expect(
    connection: Connection,
    receive: Callable[[], Awaitable[ServerMessage]],
    kind: type[M],
    fields: Mapping[str, object],
) -> M:
    """`receive` the next message and `_check` it; what is awaited is shown meanwhile."""
    what = _describe(kind, fields)
    with _awaiting(connection, what):
        message = await receive()
    return _check(connection.name, message, kind, fields, what)


@contextmanager
def _awaiting(connection: Connection, what: str) -> Iterator[None]:
    connection.awaiting = what
    try:
        yield
    finally:
        connection.awaiting = None


def _check(
    who: str, message: ServerMessage, kind: type[M], fields: Mapping[str, object], what: str
) -> M:
    if isinstance(message, kind) and all(getattr(message, k) == v for k, v in fields.items()):
        return message
    raise ProtocolViolation(f"{who} expected {what}, got {_wire(message)}")


def _describe(kind: type[M], fields: Mapping[str, object]) -> str:
    """`call_ended {reason: 'hangup', from: 'bob'}`: what is expected, in wire names.

    A field `kind` does not have is a mistake of the caller's: `TypeError`, before any wait.
    """
    names = attrs.fields_dict(kind)
    unknown = [name for name in fields if name not in names]
    if unknown:
        raise TypeError(f"{kind.__name__} has no field {', '.join(unknown)}")
    shown = ", ".join(
        f"{names[name].metadata.get('wire', name)}: {value!r}" for name, value in fields.items()
    )
    return f"{kind.TYPE} {{{shown}}}" if shown else kind.TYPE


def _wire(message: ServerMessage) -> str:
    return encode(message).decode()[:SHOWN_FRAME_CHARS]
