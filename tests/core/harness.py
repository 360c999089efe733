"""Drive a Switchboard without sockets or a real clock, the way h11's tests wire machines together.

Every frame the switchboard sends is decoded with schema validation and kept per connection as its
wire dict, so each test also proves that what it saw is valid against `schemas/`.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from callbox.auth import AuthError
from callbox.codec import decode_server
from callbox.config import Config
from callbox.core.actions import (
    CALL_TIMERS,
    Action,
    CancelTimer,
    Close,
    CloseCall,
    OpenCall,
    Send,
    StartTimer,
    TimerKey,
)
from callbox.core.outbox import Outbox
from callbox.core.store import LocalStore, TrackingStore
from callbox.core.switchboard import Switchboard
from callbox.messages import Hello, IceServer

Wire = dict[str, Any]


class Harness:
    outbox_type: type[Outbox] = Outbox
    """Where the core writes what it decides: a subclass may record more."""
    store_type: type[LocalStore] = TrackingStore
    """Where the core keeps its records: tracking by default, so every core test also checks
    that an event the core calls read-only changes nothing, and what each event read and wrote
    is there to look at (`store.committed`); a subclass may record more (see test_model.py)."""

    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        self.config = (config or Config()).with_overrides(**overrides)
        self.now = 1000.0
        self.wall_offset = 1_700_000_000.0
        """Unix time minus `now`: a test may move it, as a wall clock can be set."""
        self.ice_refresh: float | None = None
        self.refused_users: set[str] = set()
        tokens = itertools.count(1)
        self.switchboard = Switchboard(
            config=self.config,
            authenticate=self._authenticate,
            ice_servers=lambda user_id: [IceServer(urls=["stun:stun.example.org"])],
            ice_refresh_in=lambda: self.ice_refresh,
            new_token=lambda n: f"t{next(tokens)}",
            outbox=self.outbox_type(),
            store=self.store_type(),
        )
        self.inbox: dict[int, list[Wire]] = {}
        self.closed: dict[int, tuple[int, str]] = {}
        self.timers: dict[TimerKey, float] = {}
        self._timers_of_call: dict[str, set[TimerKey]] = {}
        self.open_calls: set[str] = set()
        self.calls_ever_opened: list[str] = []
        self.user_of: dict[int, str] = {}
        self.welcome_of: dict[int, Wire] = {}
        self._conns = itertools.count(1)

    @property
    def wall(self) -> float:
        """The Unix time passed with each event: a different clock from `now`, as in the shell."""
        return self.now + self.wall_offset

    def _authenticate(self, hello: Hello) -> str:
        if hello.user_id is None or hello.user_id in self.refused_users:
            raise AuthError("token signature invalid")
        return hello.user_id

    # Feeding events -------------------------------------------------------------------------

    def open(self, address: str = "192.0.2.1") -> int:
        conn = next(self._conns)
        self.inbox[conn] = []
        self._apply(self.switchboard.connect(conn, self.now, address))
        return conn

    def login(self, user_id: str, **hello: Any) -> int:
        """Open a connection and say hello; the welcome is consumed and checked."""
        conn = self.open()
        self.send(conn, {"type": "hello", "user_id": user_id, **hello})
        welcome = self.take(conn)
        assert welcome["type"] == "welcome", welcome
        self.user_of[conn] = user_id
        self.welcome_of[conn] = welcome
        return conn

    def resume(self, user_id: str, token: str, last_seq: int) -> int:
        """Open a connection and ask to resume a session; the `welcome` is left to the test."""
        conn = self.open()
        hello = {"type": "hello", "user_id": user_id, "resume": token, "last_seq": last_seq}
        self.send(conn, hello)
        return conn

    def send(self, conn: int, message: Wire | bytes) -> None:
        data = message if isinstance(message, bytes) else orjson.dumps(message)
        self._apply(self.switchboard.receive(conn, data, self.now, self.wall))

    def receive_binary(self, conn: int) -> None:
        self._apply(self.switchboard.receive_binary(conn, self.now))

    def drop(self, conn: int) -> None:
        self._apply(self.switchboard.disconnect(conn, self.now))

    def advance(self, seconds: float) -> None:
        """Let time pass, firing due timers in deadline order (as the shell's tasks would)."""
        target = self.now + seconds
        while True:
            due = [(deadline, key) for key, deadline in self.timers.items() if deadline <= target]
            if not due:
                break
            deadline, key = min(due, key=lambda item: item[0])
            del self.timers[key]
            self.now = max(self.now, deadline)
            self._apply(self.switchboard.timer_fired(key, self.now, self.wall))
        self.now = target

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(conn, frame):
                    assert conn not in self.closed, f"sent {frame!r} to closed connection {conn}"
                    decode_server(frame)  # raises if not valid against schemas/
                    self.inbox[conn].append(orjson.loads(frame))
                case Close(conn, code, reason):
                    self.closed[conn] = (code, reason)
                case OpenCall(call_id):
                    self.open_calls.add(call_id)
                    self.calls_ever_opened.append(call_id)
                case CloseCall(call_id, _reason):  # the shell cancels the nursery, timers and all
                    self.open_calls.remove(call_id)
                    for key in self._timers_of_call.pop(call_id, set()):
                        self.timers.pop(key, None)
                case StartTimer(key, deadline):
                    self.timers[key] = deadline
                    if isinstance(key, CALL_TIMERS):
                        self._timers_of_call.setdefault(key.call_id, set()).add(key)
                case CancelTimer(key):
                    self.timers.pop(key, None)

    # Reading what was sent -------------------------------------------------------------------

    def take(self, conn: int) -> Wire:
        """The oldest unread message on `conn`."""
        assert self.inbox[conn], f"nothing was sent to connection {conn}"
        return self.inbox[conn].pop(0)

    def take_all(self, conn: int) -> list[Wire]:
        messages, self.inbox[conn] = self.inbox[conn], []
        return messages

    def types(self, conn: int) -> list[str]:
        return [m["type"] for m in self.take_all(conn)]

    def expect(self, conn: int, type_: str, **fields: Any) -> Wire:
        message = self.take(conn)
        assert message["type"] == type_, message
        for name, value in fields.items():
            assert message.get(name) == value, (name, message)
        return message

    def quiet(self, *conns: int) -> None:
        for conn in conns:
            assert self.inbox[conn] == [], self.inbox[conn]


def call_between(h: Harness, caller: int, callee: int, call_id: str = "call-0001") -> None:
    """Set up an accepted 1:1 call and clear both inboxes."""
    h.send(caller, initiate(call_id, h.user_of[callee]))
    h.send(callee, {"type": "call_answer", "call_id": call_id})
    h.take_all(caller)
    h.take_all(callee)


def initiate(call_id: str, *to: str, **extra: Any) -> Wire:
    return {
        "type": "call_initiate",
        "call_id": call_id,
        "to": list(to),
        "media": {"audio": True, "video": True},
        **extra,
    }
