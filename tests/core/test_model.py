"""Model-checking the protocol's races: many clients doing anything, in any order, against the core.

hypothesis drives four users with up to two devices each through any sequence of legal and illegal
messages (glare, calling oneself or the offline, relays to strangers, answers to ended calls...),
dropped connections (noticed by the server at once, or only later, as a half-open socket is),
resumes (right, stale and future `last_seq`, old, foreign and made-up tokens) and time passing, so
that ring timeouts, the duration cap and its warning, the reconnect grace and the ICE refresh fire
in deadline order, as the shell's timers would. Clients read their frames as the shell delivers
them, so a dropped connection loses what was in flight and only a resume can make up for it.

After every step the model checks what docs/protocol.md promises ("Who is told what", "Resume"):
one `call_ended` per involvement in a call, at most one joined call per session, relays only
between joined participants, `seq` contiguous as each client sees it, `resumed` true exactly when
the resume can be honoured, and no call, session, timer or index entry outliving what it belongs
to. At the end everyone leaves and the switchboard must be empty.

Two findings of issue 10 have runs of their own, each with a dedicated exception should they come
back: a replay buffer a few messages long (a session that has read more than it holds must still
resume) and resumes whose `welcome` is lost (the token the client still holds must still work);
the main run keeps a buffer it cannot fill and loses no `welcome`.

The model reads the core's private indexes in two places only, both to check the core against
itself: `RecordingStore` records every message numbered for a session, including those kept
for a client that is away (no `Send` shows them), and `core_inconsistencies` compares the indexes
with each other and with the timers the shell holds.

The default run is bounded for the suite (250 examples of 60 steps, about 15 s on two cores, the
same examples every time); `CALLBOX_MODEL_PROFILE=long` explores far more (3000 examples of 120
steps, roughly ten minutes), with a fresh random seed each time.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from enum import Enum
from typing import Any, ClassVar

import pytest
from attrs import define, field
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from callbox.codec import decode_server, with_seq
from callbox.core.actions import (
    CALL_TIMERS,
    Action,
    DurationCapTimer,
    GraceTimer,
    IceRefreshTimer,
    RingTimer,
    Send,
)
from callbox.core.outbox import Delivery
from callbox.core.states import CallState, PartyState
from callbox.core.store import LocalStore, Overflow, TrackingStore
from callbox.core.switchboard import Switchboard
from callbox.messages import ServerMessage

from .harness import Harness, Wire

pytestmark = pytest.mark.single_process("the model checker drives one process's store")

pytestmark = pytest.mark.slow

USERS = ("ann", "bob", "cat", "dan")
DEVICES_PER_USER = 2
CALL_IDS = ("call-aaaa", "call-bbbb", "call-cccc")
"""Few, so that ids collide, calls cross (glare with the lesser id on either side) and ids are
reused after their call ended."""
ROOMS = ("room-one", "room-two")
SDP = "v=0\r\n"
RELAYS = st.sampled_from(
    [
        {"type": "sdp_offer", "sdp": SDP},
        {"type": "sdp_answer", "sdp": SDP},
        {"type": "ice_candidate", "candidate": {"candidate": ""}},
        {"type": "ice_candidate", "candidate": None},
    ]
)

TIMING: dict[str, int] = {
    "ring_timeout_ms": 30_000,
    "reconnect_grace_ms": 10_000,
    "max_call_duration_ms": 120_000,
    "call_expiring_warning_ms": 20_000,
}
"""Short enough that the durations the model lets pass reach every timer."""
UNLIMITED_RATES: dict[str, int] = {"message_burst": 1_000_000, "broadcasts_per_second": 1_000_000}
"""Rate limits would refuse a burst of steps at one instant; they are tested elsewhere."""
ICE_REFRESH_S = 45.0
ADVANCES_S = (0.5, 5.0, 9.999, 10.0, 21.0, 31.0, 61.0, 130.0)
"""Steps of the clock, chosen to land just before, on and after the timeouts of `TIMING`."""
CALL_MESSAGES = frozenset(
    {"call_ringing", "call_incoming", "call_accepted", "call_rejected", "participant_joined"}
    | {"participant_left", "call_expiring", "call_ended", "sdp_offer", "sdp_answer"}
    | {"ice_candidate"}
)
"""What a session is sent about a call it is in (`room_joined` names a call it may not be in)."""
PLENTY = 1_000_000
REJECT: Wire = {"type": "call_reject", "reason": "declined"}
"""A replay buffer the main model cannot fill (`SmallReplayModel` fills one)."""


class ProtocolViolation(AssertionError):
    """The core broke a promise of the protocol."""


class FixedFinding(ProtocolViolation):
    """A violation issue 10 found and fixed: its own type, so that a regression names itself."""


class ReplayOverflowEndsResumableSession(FixedFinding):
    """Issue 10, finding 1: a session that has received `replay_buffer_messages` messages is
    ended by the next message while its client is away, although the client missed fewer than
    that and came back within the grace (already-delivered frames fill the replay buffer)."""


class PreviousTokenRefused(FixedFinding):
    """Issue 10, finding 2: after a resume whose `welcome` was lost, the previous resume token
    (the only one the client has) is refused instead of being honoured once."""


CORE_LOG = logging.getLogger("callbox.core")


class CoreFailures(logging.Handler):
    """Keeps what the core logs as a failure (`internal error handling ...`)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Involvement(Enum):
    RINGING = "ringing"
    JOINED = "joined"


@define(eq=False)
class RecordingStore(TrackingStore):
    """Records every message the core numbers for a session: the ones it sends and the ones it
    keeps for a client that is away, which no `Send` shows but a resume must replay."""

    numbered: list[tuple[str, int, ServerMessage]] = field(factory=list, init=False)
    overflowed: dict[str, int] = field(factory=dict, init=False)
    """Sessions the core ended for a replay overflow, with how many messages, never numbered,
    would have overflowed it."""

    def commit(
        self, actions: list[Action | Delivery], applied: tuple[str, int] | None = None
    ) -> list[Action]:
        next_seq: dict[str, int] = {}
        numbered = []
        for action in actions:
            if type(action) is tuple:
                session_id, frame = action
                seq = next_seq.get(session_id, self.sessions[session_id].next_seq)
                next_seq[session_id] = seq + 1
                numbered.append((session_id, seq, decode_server(with_seq(frame, seq))))
        try:
            done = super().commit(actions, applied)
        except Overflow as overflow:
            for session_id in overflow.session_ids:
                self.overflowed[session_id] = (
                    next_seq[session_id] - self.sessions[session_id].next_seq
                )
            raise
        self.numbered.extend(numbered)
        return done


class ModelHarness(Harness):
    store_type = RecordingStore

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.forgotten: set[int] = set()
        """Connections whose loss the core has been told of: nothing may be sent to them."""

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send) and action.conn in self.forgotten:
                raise ProtocolViolation(
                    f"sent {action.frame!r} to forgotten connection {action.conn}"
                )
        super()._apply(actions)

    def drop(self, conn: int) -> None:
        super().drop(conn)
        self.forgotten.add(conn)


@define(eq=False)
class Told:
    """One session as the model knows it: everything the core numbered for it, the calls that
    makes it part of, and whether it should still exist."""

    session_id: str
    user: str
    tokens: list[str]
    """Every resume token its welcomes gave, read by the client or lost; the last is valid."""
    previous_spent: bool = True
    """Whether `tokens[-2]` may no longer be used (it is honoured once after a lost welcome)."""
    previous_expires: float = 0.0
    """...and only until the grace period after it was replaced has passed."""
    conn: int | None = None
    """The connection the core believes is this session's (it may be dead and not yet noticed)."""
    detached_at: float | None = None
    numbered_at_detach: int = 0
    messages: list[ServerMessage] = field(factory=list, repr=False)
    """Message `seq` is `messages[seq - 1]`."""
    calls: dict[str, Involvement] = field(factory=dict)
    must_end: bool = False
    """The session has to be gone (bye, or a refused resume of its token)."""
    ended: bool = False

    def joined(self) -> list[str]:
        return [c for c, how in self.calls.items() if how is Involvement.JOINED]


@define(eq=False)
class Device:
    """One client device: its connection, its session and the last `seq` it processed."""

    user: str
    index: int
    conn: int | None = None
    session: Told | None = None
    last_seq: int = 0
    tokens: list[str] = field(factory=list)
    """Every resume token this device was given, oldest first."""

    def __str__(self) -> str:
        return f"{self.user}#{self.index}"


@define
class Request:
    """The client message being handled: what the frames it causes may legitimately answer."""

    session_id: str
    type: str
    call_id: str | None = None
    to: str | None = None


class ProtocolModel(RuleBasedStateMachine):
    replay_messages: ClassVar[int] = PLENTY
    lose_welcomes: ClassVar[bool] = False
    """Whether the model may lose a resume's `welcome` in flight (issue 10, finding 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.h = ModelHarness(
            **TIMING,
            **UNLIMITED_RATES,
            replay_buffer_messages=self.replay_messages,
            replay_buffer_bytes=16 * 1024 * 1024,  # the count binds, never the bytes
        )
        self.h.ice_refresh = ICE_REFRESH_S
        self.failures = CoreFailures()
        CORE_LOG.addHandler(self.failures)
        self.sb = self.h.switchboard
        store = self.sb.store
        assert isinstance(store, RecordingStore)
        self.store = store
        self.devices = [Device(u, i) for u in USERS for i in range(DEVICES_PER_USER)]
        self.sessions: dict[str, Told] = {}
        self.by_token: dict[str, Told] = {}
        self.unnoticed: list[int] = []
        """Connections the clients dropped without the server knowing yet (half-open)."""
        self.request: Request | None = None
        self.grace = TIMING["reconnect_grace_ms"] / 1000

    # Choosing who acts ----------------------------------------------------------------------------

    def online(self) -> list[Device]:
        return [d for d in self.devices if d.conn is not None]

    def offline(self) -> list[Device]:
        return [d for d in self.devices if d.conn is None]

    def _send(self, device: Device, message: Wire) -> None:
        """`device` sends `message`; the frames it causes are then checked."""
        assert device.conn is not None and device.session is not None
        self.request = Request(
            device.session.session_id,
            message["type"],
            message.get("call_id"),
            message.get("to") if isinstance(message.get("to"), str) else None,
        )
        self.h.send(device.conn, message)
        self._settle()

    def _call_id(self, data: st.DataObject, device: Device) -> str:
        """Mostly a call the device is in (the first candidates are the ones drawn and shrunk to
        first), else any: another's, an ended one, one that never was."""
        assert device.session is not None
        return data.draw(st.sampled_from([*device.session.calls, *CALL_IDS]), label="call_id")

    def _participants(self, call_id: str) -> list[str]:
        return [
            t.user for t in self.sessions.values() if t.calls.get(call_id) is Involvement.JOINED
        ]

    # Rules: connecting ----------------------------------------------------------------------------

    @initialize()
    def everyone_says_hello(self) -> None:
        """Each user's first device starts online, so calls start from the first step, and
        watches everyone else's presence, as a contact list does: every call event then changes
        what watchers are told, including the ends of sessions that watch their call's peer."""
        first_devices = self.devices[::DEVICES_PER_USER]
        for device in first_devices:
            conn, hello = self.h.open(), {"type": "hello", "user_id": device.user}
            self.h.send(conn, hello)
            self._welcomed(device, conn, self.h.inbox[conn].pop(0), hello, None)
        for device in first_devices:
            others = [user for user in USERS if user != device.user]
            self._send(device, {"type": "presence_subscribe", "users": others})

    @precondition(lambda self: self.offline())
    @rule(data=st.data())
    def hello(self, data: st.DataObject) -> None:
        """A fresh `hello`, or a resume with the right, a stale or a future `last_seq`, an old,
        another user's or a made-up token; after a lost `welcome` the right token is the one
        before the latest."""
        device = data.draw(st.sampled_from(self.offline()), label="device")
        modes = ["fresh", "garbage_token", "other_users_token"]
        if device.session is not None:
            stale = ["stale_seq"] if device.last_seq > 0 else []
            modes = ["right", "right", "right", "future_seq", *stale, *modes]  # mostly: resume
        if self._old_tokens(device):
            modes.append("old_token")
        self._hello(device, data.draw(st.sampled_from(modes), label="mode"), data)

    def resumable(self) -> list[Device]:
        return [d for d in self.offline() if d.session is not None] if self.lose_welcomes else []

    @precondition(lambda self: self.resumable())
    @rule(data=st.data())
    def resume_losing_welcome(self, data: st.DataObject) -> None:
        """A resume whose connection dies before the client reads its `welcome`: the client
        still has only the token it resumed with."""
        self._hello(data.draw(st.sampled_from(self.resumable()), label="device"), "lost", data)

    def _hello(self, device: Device, mode: str, data: st.DataObject) -> None:
        hello: Wire = {"type": "hello", "user_id": device.user}
        if mode != "fresh":
            token, last_seq = self._resume_with(device, mode, data)
            hello |= {"resume": token, "last_seq": last_seq}
        expected = self._expected_resume(device.user, hello.get("resume"), hello.get("last_seq"))
        named = self.by_token.get(hello.get("resume", ""))
        if named is not None and named.user != device.user:
            named = None
        if expected is None and named is not None:  # a refused resume ends the session it named
            named.must_end = True
        conn = self.h.open()
        self.request = None
        self.h.send(conn, hello)
        if named is not None and named.conn is not None:  # still open as far as the core knew
            if self.h.closed.get(named.conn, (0,))[0] != 4002:
                raise ProtocolViolation(f"connection {named.conn} was not taken over (4002)")
            self.h.forgotten.add(named.conn)
        first = self.h.inbox[conn].pop(0)
        if first["type"] == "error":
            self._turned_away(device, conn, first)
        elif mode == "lost":
            self._welcomed(None, conn, first, hello, expected)
            self._detach_conn(conn)
        else:
            self._welcomed(device, conn, first, hello, expected)

    def _old_tokens(self, device: Device) -> list[str]:
        """Tokens of `device` no session may accept: neither the latest of a live session nor the
        one before it (which is honoured once)."""
        recent = {t for told in self.sessions.values() if not told.ended for t in told.tokens[-2:]}
        return [token for token in device.tokens if token not in recent]

    def _resume_with(self, device: Device, mode: str, data: st.DataObject) -> tuple[str, int]:
        session = device.session
        last_seq = device.last_seq
        if mode == "garbage_token":
            return "not-a-token", last_seq
        if mode == "other_users_token":
            others = [t for t, told in self.by_token.items() if told.user != device.user]
            return (data.draw(st.sampled_from(others)) if others else "t-nobody"), last_seq
        if mode == "old_token":
            return data.draw(st.sampled_from(self._old_tokens(device)), label="token"), last_seq
        assert session is not None
        if mode == "stale_seq":
            last_seq = data.draw(st.integers(0, device.last_seq - 1), label="last_seq")
        elif mode == "future_seq":
            last_seq = len(session.messages) + data.draw(st.integers(1, 3), label="ahead")
        return device.tokens[-1], last_seq

    def _expected_resume(self, user: str, token: str | None, last_seq: int | None) -> Told | None:
        """The session a resume with `token` must bring back, or None if it must not."""
        if token is None or last_seq is None:
            return None
        told = self.by_token.get(token) or self._previous_token_holder(token)
        if told is None or told.ended or told.must_end or told.user != user:
            return None
        if self._grace_passed(told) or self._overflowed(told):
            return None
        missed = len(told.messages) - last_seq
        return told if 0 <= missed <= self.replay_messages else None

    def _previous_token_holder(self, token: str) -> Told | None:
        """The token before the latest is honoured once, within the grace after it was replaced
        (a `welcome` may have been lost)."""
        for told in self.sessions.values():
            if len(told.tokens) > 1 and told.tokens[-2] == token and not told.previous_spent:
                return told if self.h.now < told.previous_expires else None
        return None

    def _welcomed(
        self, device: Device | None, conn: int, welcome: Wire, hello: Wire, expected: Told | None
    ) -> None:
        """Check `welcome` against the session the model expects back (`expected`, None for a
        new one), and adopt the session it names for `device` (None: the client never read the
        welcome, its connection was lost)."""
        if welcome["type"] != "welcome":
            raise ProtocolViolation(f"hello answered by {welcome}")
        if welcome["resumed"] != (expected is not None):
            self._wrong_resume(expected, hello, welcome)
        event(f"hello {'resumed' if expected else 'new session'}")
        if expected is not None:
            told = expected
            if told.session_id != welcome["session_id"]:
                raise ProtocolViolation(f"resumed {welcome['session_id']}, not {told.session_id}")
            self.by_token.pop(told.tokens[-1], None)
            told.previous_spent = hello["resume"] != told.tokens[-1]
            told.previous_expires = self.h.now + self.grace
            told.tokens.append(welcome["resume_token"])
            told.detached_at = None
        else:
            told = Told(welcome["session_id"], hello["user_id"], [welcome["resume_token"]])
            if told.session_id in self.sessions:
                raise ProtocolViolation(f"a new session reuses the id {told.session_id}")
            self.sessions[told.session_id] = told
        told.conn = conn
        self.by_token[told.tokens[-1]] = told
        if device is not None:
            device.conn, device.session = conn, told
            device.last_seq = hello.get("last_seq", 0) if expected is not None else 0
            device.tokens.append(told.tokens[-1])
        self._settle()

    def _wrong_resume(self, expected: Told | None, hello: Wire, welcome: Wire) -> None:
        if expected is not None and hello["resume"] != expected.tokens[-1]:
            raise PreviousTokenRefused(f"{hello} refused: {welcome['session_id']} is new")
        if expected is not None and len(expected.messages) > self.replay_messages:
            raise ReplayOverflowEndsResumableSession(
                f"{hello} refused: it missed {len(expected.messages) - hello['last_seq']}"
                f" of {len(expected.messages)} messages, the buffer holds {self.replay_messages}"
            )
        raise ProtocolViolation(
            f"{hello} got resumed={welcome['resumed']}, the model expected"
            f" {'a resume of ' + expected.session_id if expected else 'a new session'}"
        )

    def _turned_away(self, device: Device, conn: int, error: Wire) -> None:
        """Only `session_limit` may refuse a `hello` of a known user (closing with 1008)."""
        alive = [
            t
            for t in self.sessions.values()
            if t.user == device.user and not t.ended and not t.must_end
        ]
        if error["code"] != "session_limit" or len(alive) < self.h.config.max_sessions_per_user:
            raise ProtocolViolation(f"hello of {device} refused: {error}")
        if self.h.closed.get(conn, (0,))[0] != 1008:
            raise ProtocolViolation(f"session_limit without closing {conn} with 1008")
        self._settle()

    @precondition(lambda self: self.online())
    @rule(data=st.data(), noticed=st.booleans())
    def drop(self, data: st.DataObject, noticed: bool) -> None:
        """The connection dies; the server notices at once, or only later (half-open)."""
        device = data.draw(st.sampled_from(self.online()), label="device")
        assert device.conn is not None
        self.h.inbox[device.conn].clear()  # in flight: lost
        if noticed:
            self._detach_conn(device.conn)
        else:
            self.unnoticed.append(device.conn)
        device.conn = None

    def _detach_conn(self, conn: int) -> None:
        self.request = None
        self.h.drop(conn)
        self.h.inbox[conn].clear()
        for told in self.sessions.values():
            if told.conn == conn and not told.ended:
                told.conn, told.detached_at = None, self.h.now
                told.numbered_at_detach = len(told.messages)
        self._settle()

    @precondition(lambda self: self.unnoticed)
    @rule()
    def notice_dead_connections(self) -> None:
        """The heartbeat finds the half-open connections."""
        while self.unnoticed:
            self._detach_conn(self.unnoticed.pop())

    @precondition(lambda self: self.online())
    @rule(data=st.data())
    def bye(self, data: st.DataObject) -> None:
        device = data.draw(st.sampled_from(self.online()), label="device")
        self._bye(device)

    def _bye(self, device: Device) -> None:
        assert device.conn is not None and device.session is not None
        conn, told = device.conn, device.session
        told.must_end = True
        self._send(device, {"type": "bye"})
        self._read(device)
        if self.h.closed.get(conn) != (1000, "bye"):
            raise ProtocolViolation(f"bye did not close {conn} with 1000")
        self.h.forgotten.add(conn)
        device.conn, device.session = None, None

    @precondition(lambda self: self.online())
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        self._read(data.draw(st.sampled_from(self.online()), label="device"))

    def _read(self, device: Device) -> None:
        """The client processes what has reached it, in order, as the shell delivered it."""
        assert device.conn is not None and device.session is not None
        for wire in self.h.take_all(device.conn):
            if "seq" not in wire:
                continue
            if wire["seq"] != device.last_seq + 1:
                raise ProtocolViolation(
                    f"{device} read seq {wire['seq']} after {device.last_seq}: {wire}"
                )
            told = device.session.messages[wire["seq"] - 1]
            if (wire["type"], wire.get("call_id")) != (told.TYPE, getattr(told, "call_id", None)):
                raise ProtocolViolation(f"{device} read {wire} as seq {wire['seq']}, not {told}")
            device.last_seq = wire["seq"]

    # Rules: calls ---------------------------------------------------------------------------------

    @precondition(lambda self: self.online())
    @rule(
        data=st.data(),
        call_id=st.sampled_from(CALL_IDS),
        to=st.lists(st.sampled_from(USERS), min_size=1, max_size=3, unique=True),
        room=st.sampled_from([None, None, None, *ROOMS]),
    )
    def call_initiate(
        self, data: st.DataObject, call_id: str, to: list[str], room: str | None
    ) -> None:
        """A 1:1 or group call (to oneself, the offline, the busy included), or a room's call."""
        device = data.draw(st.sampled_from(self.online()), label="device")
        target: Wire = {"to": to} if room is None else {"room": room}
        media = {"audio": True, "video": False}
        self._send(device, {"type": "call_initiate", "call_id": call_id, "media": media} | target)

    @precondition(lambda self: self.online())
    @rule(
        data=st.data(),
        message=st.sampled_from(
            [
                {"type": "call_answer"},
                {"type": "call_join"},
                {"type": "call_reject", "reason": "declined"},
                {"type": "call_reject", "reason": "busy"},
                {"type": "hangup"},
            ]
        ),
    )
    def call_act(self, data: st.DataObject, message: Wire) -> None:
        device = data.draw(st.sampled_from(self.online()), label="device")
        self._send(device, message | {"call_id": self._call_id(data, device)})

    def rung(self) -> list[tuple[Device, str]]:
        return [
            (d, c)
            for d in self.online()
            if d.session is not None
            for c, how in d.session.calls.items()
            if how is Involvement.RINGING
        ]

    @precondition(lambda self: self.rung())
    @rule(data=st.data(), kind=st.sampled_from(["call_answer", "call_join"]))
    def answer(self, data: st.DataObject, kind: str) -> None:
        """A ringing device answers (in a race with the user's other devices, glare, timeouts)."""
        device, call_id = data.draw(st.sampled_from(self.rung()), label="ringing")
        self._send(device, {"type": kind, "call_id": call_id})

    @precondition(lambda self: self.rung())
    @rule(data=st.data(), call_id=st.sampled_from(CALL_IDS))
    def call_back(self, data: st.DataObject, call_id: str) -> None:
        """A rung device calls its caller at the same moment: glare, with the lesser id on
        either side (or the same id: call_exists)."""
        device, rung_by = data.draw(st.sampled_from(self.rung()), label="ringing")
        assert device.session is not None
        caller = next(
            getattr(m, "from_", None)
            for m in reversed(device.session.messages)
            if m.TYPE == "call_incoming" and getattr(m, "call_id", None) == rung_by
        )
        media = {"audio": True, "video": True}
        initiate = {"type": "call_initiate", "call_id": call_id, "to": [caller], "media": media}
        self._send(device, initiate)

    @precondition(lambda self: self.online())
    @rule(
        data=st.data(),
        to=st.lists(st.sampled_from(USERS), min_size=1, max_size=2, unique=True),
    )
    def call_invite(self, data: st.DataObject, to: list[str]) -> None:
        device = data.draw(st.sampled_from(self.online()), label="device")
        call_id = self._call_id(data, device)
        self._send(device, {"type": "call_invite", "call_id": call_id, "to": to})

    @precondition(lambda self: self.online())
    @rule(
        data=st.data(),
        relay=RELAYS,
    )
    def relay(self, data: st.DataObject, relay: Wire) -> None:
        """To anyone, about any call: a non-participant, oneself, a call one is not in."""
        device = data.draw(st.sampled_from(self.online()), label="device")
        to = data.draw(st.sampled_from(USERS), label="to")
        self._send(device, relay | {"call_id": self._call_id(data, device), "to": to})

    def talking(self) -> list[tuple[Device, str, str]]:
        return [
            (d, c, other)
            for d in self.online()
            if d.session is not None
            for c in d.session.joined()
            for other in self._participants(c)
            if other != d.user
        ]

    @precondition(lambda self: self.talking())
    @rule(data=st.data(), relay=RELAYS)
    def relay_in_call(self, data: st.DataObject, relay: Wire) -> None:
        """To another participant of one's call, as peers negotiate (and race its end)."""
        device, call_id, to = data.draw(st.sampled_from(self.talking()), label="peers")
        self._send(device, relay | {"call_id": call_id, "to": to})

    # Rules: rooms and presence --------------------------------------------------------------------

    @precondition(lambda self: self.online())
    @rule(
        data=st.data(),
        room=st.sampled_from(ROOMS),
        kind=st.sampled_from(["room_join", "room_leave", "room_broadcast"]),
    )
    def room(self, data: st.DataObject, room: str, kind: str) -> None:
        device = data.draw(st.sampled_from(self.online()), label="device")
        extra: Wire = {"data": {"n": 1}} if kind == "room_broadcast" else {}
        self._send(device, {"type": kind, "room": room} | extra)

    @precondition(lambda self: self.online())
    @rule(
        data=st.data(),
        message=st.one_of(
            st.builds(
                lambda kind, users: {"type": kind, "users": users},
                st.sampled_from(["presence_subscribe", "presence_unsubscribe"]),
                st.lists(st.sampled_from(USERS), min_size=1, max_size=2, unique=True),
            ),
            st.builds(
                lambda status: {"type": "presence_set", "status": status},
                st.sampled_from(["online", "away", "dnd"]),
            ),
        ),
    )
    def presence(self, data: st.DataObject, message: Wire) -> None:
        device = data.draw(st.sampled_from(self.online()), label="device")
        self._send(device, message)

    # Rules: time ----------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from(ADVANCES_S))
    def advance(self, seconds: float) -> None:
        self.notice_dead_connections()
        self.request = None
        self.h.advance(seconds)
        self._settle()

    # Checking what the core numbered --------------------------------------------------------------

    def _settle(self) -> None:
        """Check every message numbered by the last event, then which sessions still exist.

        First, that the core failed nowhere: a bug in a handler is answered `internal` and one
        in a timer only logged, so neither would otherwise stop the run."""
        if self.failures.records:
            record = self.failures.records[0]
            raise ProtocolViolation(f"the core failed: {record.getMessage()}") from (
                None if record.exc_info is None else record.exc_info[1]
            )
        for session_id, seq, message in self.store.numbered:
            self._tell(session_id, seq, message)
        self.store.numbered.clear()
        self._check_session_ends()
        self.request = None

    def _tell(self, session_id: str, seq: int, message: ServerMessage) -> None:
        told = self.sessions.get(session_id)
        if told is None or told.ended:
            raise ProtocolViolation(f"{message} numbered for a session that is not alive")
        if seq != len(told.messages) + 1:
            raise ProtocolViolation(f"{message} numbered {seq} after {len(told.messages)}")
        told.messages.append(message)
        event(f"told {message.TYPE}")
        call_id = getattr(message, "call_id", None)
        if call_id is None or message.TYPE not in CALL_MESSAGES:
            return
        self._involve(told, call_id, message)
        if len(told.joined()) > 1:
            raise ProtocolViolation(f"{session_id} is in calls {told.joined()} at once")

    def _involve(self, told: Told, call_id: str, message: ServerMessage) -> None:
        """Follow `told`'s part in `call_id` through `message`, refusing what it must not get."""
        request = self.request
        mine = request is not None and request.session_id == told.session_id
        before = told.calls.get(call_id)
        if before is None and mine and request is not None and request.type == "call_initiate":
            before = told.calls[call_id] = Involvement.JOINED  # the caller is in from the start
        kind = message.TYPE
        if kind == "call_incoming":
            if before is not None:
                raise ProtocolViolation(f"{told.session_id} rung again in {call_id}: {message}")
            told.calls[call_id] = Involvement.RINGING
        elif kind == "call_ended":
            if before is None:
                raise ProtocolViolation(f"{told.session_id} not in {call_id} got {message}")
            del told.calls[call_id]
        elif kind == "call_accepted" and getattr(message, "by", None) == told.user:
            glare = request is not None and (request.type, request.call_id) == (
                "call_initiate",
                call_id,
            )
            answered = mine or glare
            if before is Involvement.JOINED or not answered:
                raise ProtocolViolation(f"{told.session_id} ({before}) got {message}")
            told.calls[call_id] = Involvement.JOINED
        elif before is not Involvement.JOINED:
            raise ProtocolViolation(f"{told.session_id}, {before} in {call_id}, got {message}")
        elif kind in ("sdp_offer", "sdp_answer", "ice_candidate"):
            self._check_relay(told, call_id, message)

    def _check_relay(self, told: Told, call_id: str, message: ServerMessage) -> None:
        request = self.request
        sender = None if request is None else self.sessions[request.session_id]
        if (
            request is None
            or sender is None
            or sender.calls.get(call_id) is not Involvement.JOINED
            or request.to != told.user
            or getattr(message, "from_", None) != sender.user
        ):
            raise ProtocolViolation(f"{message} relayed to {told.session_id} for {request}")

    def _grace_passed(self, told: Told) -> bool:
        return told.detached_at is not None and self.h.now >= told.detached_at + self.grace

    def _overflowed(self, told: Told) -> bool:
        """More messages arrived while away than the buffer holds: the session may end (the fixed
        rule of issue 10's finding 1; only the resume is then certain to be refused). The
        messages that would have overflowed it are never numbered: the store says how many."""
        away = len(told.messages) - told.numbered_at_detach
        never_numbered = self.store.overflowed.get(told.session_id, 0)
        return told.detached_at is not None and away + never_numbered > self.replay_messages

    def _check_session_ends(self) -> None:
        core = self.store.sessions
        for told in self.sessions.values():
            if told.ended:
                continue
            alive = told.session_id in core
            should_end = told.must_end or self._grace_passed(told)
            if alive and should_end:
                raise ProtocolViolation(f"session {told.session_id} outlived its end")
            if not alive and not should_end and not self._overflowed(told):
                if told.detached_at is not None and len(told.messages) > self.replay_messages:
                    raise ReplayOverflowEndsResumableSession(
                        f"{told.session_id} ended {self.h.now - told.detached_at:.3f} s into its"
                        f" grace, {len(told.messages) - told.numbered_at_detach} messages after"
                        f" it left; its buffer holds {self.replay_messages}"
                    )
                raise ProtocolViolation(f"session {told.session_id} ended for no reason")
            if not alive:
                told.ended = True
                told.calls.clear()  # its involvement ended with it; nobody is left to tell
                self.by_token.pop(told.tokens[-1], None)
        unknown = set(core) - set(self.sessions)
        if unknown:
            raise ProtocolViolation(f"sessions the model never saw welcomed: {unknown}")

    # Invariants -----------------------------------------------------------------------------------

    @invariant()
    def involvement_matches_the_core(self) -> None:
        """Every call a live session was told it is in still exists, and the core agrees on how
        the session is in it: a call that ended without telling someone shows up here."""
        for told in self.sessions.values():
            if told.ended:
                continue
            session = self.store.sessions[told.session_id]
            for call_id, how in told.calls.items():
                if self.sb.call_state(call_id) is None:
                    raise ProtocolViolation(
                        f"call {call_id} is over but {told.session_id} ({how.value}) was not told"
                    )
            core_joined = [] if session.call_id is None else [session.call_id]
            if told.joined() != core_joined:
                raise ProtocolViolation(
                    f"{told.session_id} was told it is in {told.joined()}, the core has"
                    f" {core_joined}"
                )
            ringing = {c for c, how in told.calls.items() if how is Involvement.RINGING}
            if ringing != set(session.ringing):
                raise ProtocolViolation(
                    f"{told.session_id} was rung by {ringing}, the core has {set(session.ringing)}"
                )

    @invariant()
    def no_record_outlives_its_owner(self) -> None:
        problems = list(core_inconsistencies(self.sb, self.h))
        if problems:
            raise ProtocolViolation("; ".join(problems))

    # The end: everyone leaves ---------------------------------------------------------------------

    def teardown(self) -> None:
        """Everyone reads, hangs up, rejects and says bye; time passes; nothing may remain."""
        try:
            self._everyone_leaves()
        finally:
            CORE_LOG.removeHandler(self.failures)

    def _everyone_leaves(self) -> None:
        if sys.exc_info()[0] is not None:  # a step failed: report that, not a consequence
            return
        self.notice_dead_connections()
        for device in self.online():
            self._read(device)
            assert device.session is not None
            for call_id, how in list(device.session.calls.items()):
                if device.session.calls.get(call_id) is how:  # a previous hangup may have ended it
                    joined = how is Involvement.JOINED
                    leave = {"type": "hangup"} if joined else REJECT
                    self._send(device, leave | {"call_id": call_id})
        for device in self.online():
            if device.session is not None and device.session.calls:
                raise ProtocolViolation(f"{device} still in {device.session.calls} after leaving")
            self._bye(device)
        self.advance(TIMING["max_call_duration_ms"] / 1000 + self.grace)
        event("everyone left")
        leftovers = {k: v for k, v in self.sb.statistics().items() if v}
        if leftovers or self.h.timers or self.h.open_calls:
            raise ProtocolViolation(
                f"after everyone left: {leftovers}, timers {self.h.timers},"
                f" calls {self.h.open_calls}"
            )


def core_inconsistencies(sb: Switchboard, h: Harness) -> Iterator[str]:
    """What in the core's indexes, or in the timers it left running, belongs to nothing."""
    store = sb.store
    assert isinstance(store, LocalStore)
    calls, sessions = store.calls, store.sessions
    if set(calls) != h.open_calls:
        yield f"calls held {set(calls)} but open in the shell {h.open_calls}"
    for key in h.timers:
        if isinstance(key, CALL_TIMERS) and key.call_id not in calls:
            yield f"timer {key} outlives its call"
        elif isinstance(key, GraceTimer | IceRefreshTimer) and key.session_id not in sessions:
            yield f"timer {key} outlives its session"
    for call in calls.values():
        if call.state is CallState.ENDED:
            yield f"ended call {call.call_id} still held"
        if call.ends_at is not None and DurationCapTimer(call.call_id) not in h.timers:
            yield f"call {call.call_id} has no duration cap running"
        for party in call.parties.values():
            timer = RingTimer(call.call_id, party.user_id)
            if party.state is PartyState.RINGING and timer not in h.timers:
                yield f"{party.user_id} rings in {call.call_id} with no ring timeout"
            if party.state is not PartyState.RINGING and timer in h.timers:
                yield f"{timer} runs for a party that is {party.state}"
            if not party.ringing_sessions <= set(sessions):
                yield f"{call.call_id} rings ended sessions {party.ringing_sessions}"
    for session in sessions.values():
        if session.call_id is not None and session.call_id not in calls:
            yield f"{session.session_id} is in ended call {session.call_id}"
        if not set(session.ringing) <= set(calls):
            yield f"{session.session_id} rung by ended calls {session.ringing}"
        grace = GraceTimer(session.session_id)
        if (session.conn is None) != (grace in h.timers):
            running = grace in h.timers
            yield f"{session.session_id} connected={session.conn is not None}, grace: {running}"
        if session.conn is not None and IceRefreshTimer(session.session_id) not in h.timers:
            yield f"{session.session_id} is connected with no ICE refresh"
        if store.by_resume_token.get(session.resume_token) != session.session_id:
            yield f"{session.session_id} is not found by its resume token"
    tokens = len(sessions) + sum(s.previous_token is not None for s in sessions.values())
    if len(store.by_resume_token) != tokens:
        yield f"{len(store.by_resume_token)} resume tokens for {len(sessions)} sessions"
    for user_id, user in store.users.items():
        if not user.sessions and not user.calls:
            yield f"idle user {user_id} still indexed"
        if not set(user.calls) <= set(calls):
            yield f"user {user_id} indexed in ended calls {set(user.calls) - set(calls)}"
        if not set(user.sessions) <= set(sessions):
            yield f"user {user_id} indexed with ended sessions"
    for room in store.rooms.values():
        if not room.sessions or not set(room.sessions) <= set(sessions):
            yield f"room {room.name} holds {set(room.sessions)}"
        if room.call_id is not None and room.call_id not in calls:
            yield f"room {room.name} points at ended call {room.call_id}"
    for user_id, watchers in store.watching.items():
        if not watchers or any(w not in sessions for w in watchers):
            yield f"presence of {user_id} watched by ended sessions"


class SmallReplayModel(ProtocolModel):
    """The same, with a replay buffer a few messages long (issue 10, finding 1)."""

    replay_messages = 3


class LostWelcomeModel(ProtocolModel):
    """The same, with resumes whose `welcome` is lost in flight (issue 10, finding 2)."""

    lose_welcomes = True


PROFILES: dict[str, dict[str, Any]] = {
    "default": {"max_examples": 250, "stateful_step_count": 60, "derandomize": True},
    "long": {"max_examples": 3000, "stateful_step_count": 120, "derandomize": False},
}
_PROFILE = PROFILES[os.environ.get("CALLBOX_MODEL_PROFILE", "default")]
MODEL_SETTINGS = settings(
    **_PROFILE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FOCUSED_SETTINGS = settings(MODEL_SETTINGS, max_examples=min(_PROFILE["max_examples"], 40))
"""For the runs aimed at one finding each: fewer examples, each more likely to reach it."""


def test_a_replay_buffer_full_of_delivered_frames_still_resumes() -> None:
    """The shortest story of issue 10's first finding: delivered frames make room."""
    h = Harness(replay_buffer_messages=2)
    alice, bob = h.login("alice"), h.login("bob")
    for n in range(2):
        h.send(bob, {"type": "room_join", "room": f"room-{n}"})  # bob's seq 1 and 2, both read
    token = h.welcome_of[bob]["resume_token"]
    h.take_all(bob)
    h.drop(bob)
    h.send(alice, {"type": "room_join", "room": "room-0"})  # bob's seq 3, while away
    new = h.resume("bob", token, 2)
    h.expect(new, "welcome", resumed=True)
    h.expect(new, "room_member_joined", seq=3)


def test_the_previous_token_resumes_after_a_lost_welcome() -> None:
    """The shortest story of issue 10's second finding: the token the client holds still works."""
    h = Harness()
    bob = h.login("bob")
    token = h.welcome_of[bob]["resume_token"]
    h.drop(bob)
    lost = h.resume("bob", token, 0)
    h.drop(lost)  # its welcome, with the new token, never reached the client
    again = h.resume("bob", token, 0)
    h.expect(again, "welcome", resumed=True)


def test_model() -> None:
    run_state_machine_as_test(ProtocolModel, settings=MODEL_SETTINGS)


def test_model_with_a_small_replay_buffer() -> None:
    run_state_machine_as_test(SmallReplayModel, settings=FOCUSED_SETTINGS)


def test_model_with_lost_welcomes() -> None:
    run_state_machine_as_test(LostWelcomeModel, settings=FOCUSED_SETTINGS)
